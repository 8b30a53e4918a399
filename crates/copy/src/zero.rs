//! Zero detection on read buffers.

/// True when every byte of `buf` is zero. Data blocks almost always have a non-zero byte in
/// their first words, so those are looked at first (dense data costs a few loads per block);
/// the rest is a branch-free loop the compiler vectorises.
pub fn is_zero(buf: &[u8]) -> bool {
    let head = buf.len().min(32);
    if buf[..head].iter().any(|&b| b != 0) {
        return false;
    }
    let mut acc = 0u64;
    let mut chunks = buf.chunks_exact(8);
    for c in &mut chunks {
        acc |= u64::from_ne_bytes(c.try_into().expect("8 bytes"));
    }
    for &b in chunks.remainder() {
        acc |= u64::from(b);
    }
    acc == 0
}

/// Splits `buf` into alternating runs of (is_zero, start, len) at `granularity` bytes.
pub fn zero_runs(buf: &[u8], granularity: usize) -> Vec<(bool, usize, usize)> {
    let mut runs: Vec<(bool, usize, usize)> = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let n = granularity.min(buf.len() - pos);
        let z = is_zero(&buf[pos..pos + n]);
        match runs.last_mut() {
            Some(last) if last.0 == z => last.2 += n,
            _ => runs.push((z, pos, n)),
        }
        pos += n;
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_zero_and_non_zero_blocks() {
        let mut head = vec![0u8; 64];
        head[31] = 1;
        assert!(!is_zero(&head), "a non-zero byte in the first words");
        head[31] = 0;
        head[32] = 1;
        assert!(!is_zero(&head), "a non-zero byte just past them");
        assert!(is_zero(&[0u8; 4097]));
        let mut b = vec![0u8; 4097];
        b[4096] = 1;
        assert!(!is_zero(&b));
        assert!(is_zero(&[]));
    }

    #[test]
    fn zero_runs_alternate_and_cover_the_buffer() {
        let mut b = vec![0u8; 5 * 4096 + 100];
        b[4096] = 7;
        b[4 * 4096 + 5] = 1;
        let r = zero_runs(&b, 4096);
        assert_eq!(
            r,
            vec![
                (true, 0, 4096),
                (false, 4096, 4096),
                (true, 8192, 8192),
                (false, 16384, 4096),
                (true, 20480, 100)
            ]
        );
    }

    proptest::proptest! {
        #[test]
        fn runs_cover_input_and_agree_with_is_zero(data in proptest::collection::vec(proptest::prelude::prop_oneof![9 => proptest::prelude::Just(0u8), 1 => proptest::prelude::any::<u8>()], 0..20000), g in 1usize..5000) {
            let runs = zero_runs(&data, g);
            let mut pos = 0;
            for (z, s, n) in runs {
                proptest::prop_assert_eq!(s, pos);
                proptest::prop_assert_eq!(z, is_zero(&data[s..s + n]));
                pos += n;
            }
            proptest::prop_assert_eq!(pos, data.len());
        }
    }
}
