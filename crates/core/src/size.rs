//! Byte sizes as operators write them: `10G` is 10 GiB, like `qemu-img` (binary units).

use thiserror::Error;

/// A size string could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid size {input:?}: {reason} (use a number with an optional K, M, G, T or P suffix, binary units, e.g. 50M)")]
pub struct SizeError {
    /// The text as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Parses `"512"`, `"64k"`, `"50M"`, `"1.5G"`, `"10GiB"`, `"2T"` into bytes.
///
/// Suffixes are binary (K = 1024), as in `qemu-img`; a trailing `B`/`iB` is accepted.
/// Fractions are allowed when the result is a whole number of bytes.
///
/// # Errors
/// [`SizeError`] for empty input, unknown suffixes, negative values or overflow past `u64`.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let err = |reason| SizeError {
        input: input.to_string(),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(err("no number"));
    }
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        _ => return Err(err("unknown suffix")),
    };
    let (int_part, frac_part) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if frac_part.contains('.') {
        return Err(err("more than one decimal point"));
    }
    let int: u64 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().map_err(|_| err("number too large"))?
    };
    let whole = int
        .checked_mul(1u64 << shift)
        .ok_or_else(|| err("number too large"))?;
    if frac_part.is_empty() {
        return Ok(whole);
    }
    // Exact decimal fraction of the unit: frac / 10^digits * 2^shift must be whole.
    if frac_part.len() > 18 {
        return Err(err("too many decimals"));
    }
    let frac: u128 = frac_part.parse().map_err(|_| err("bad fraction"))?;
    let denom = 10u128.pow(u32::try_from(frac_part.len()).map_err(|_| err("bad fraction"))?);
    let scaled = frac * (1u128 << shift);
    if !scaled.is_multiple_of(denom) {
        return Err(err("not a whole number of bytes"));
    }
    let extra = u64::try_from(scaled / denom).map_err(|_| err("number too large"))?;
    whole
        .checked_add(extra)
        .ok_or_else(|| err("number too large"))
}

/// Formats bytes for people: `1.5 GiB`, `512 B`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    let mut value = bytes as f64;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Bytes per second for `bytes` moved in `secs` seconds (0 when no time passed).
pub fn rate_bytes_per_sec(bytes: u64, secs: f64) -> u64 {
    if secs <= 0.0 {
        return 0;
    }
    // `as` saturates for floats: a huge rate becomes u64::MAX, a NaN 0.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let r = (bytes as f64 / secs) as u64;
    r
}

/// Whole milliseconds of `d`, saturating.
pub fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A bandwidth limit for people: `20.0 MiB/s`, or `unlimited` for 0 (bytes/s).
pub fn format_limit(bytes_per_sec: u64) -> String {
    if bytes_per_sec == 0 {
        "unlimited".to_string()
    } else {
        format!("{}/s", format_bytes(bytes_per_sec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_are_binary_like_qemu_img() {
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("50M"), Ok(50 << 20));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
    }

    #[test]
    fn rejects_garbage_with_the_input_named() {
        let e = parse_size("12X").unwrap_err();
        assert!(e.to_string().contains("\"12X\""));
        assert!(parse_size("").is_err());
        assert!(parse_size("-5M").is_err());
        assert!(parse_size("99999999999P").is_err());
        assert!(parse_size("0.3").is_err());
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(3 << 29), "1.5 GiB");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in ".{0,24}") { let _ = parse_size(&s); }

        #[test]
        fn plain_numbers_round_trip(n in 0u64..u64::MAX) {
            proptest::prop_assert_eq!(parse_size(&n.to_string()), Ok(n));
        }
    }
}
