//! The test guest's block stamps (see `guest/stamper.c`) and a host-side verifier.
//!
//! Every 4096-byte block of the stamped region holds, as little-endian u64 words:
//! `[MAGIC, block, seq, MAGIC ^ block ^ seq ^ CHECK_XOR, fill(block, seq, 4), …, fill(block, seq, 511)]`.
//! The guest logs `VMSHIFT-SEQ <floor> <dev>` after each flushed batch: every block of the
//! region holds a sequence number ≥ `floor` from then on.

use std::io::Read;
use std::path::Path;

/// Stamp block size in bytes.
pub const BLOCK: usize = 4096;
/// First word of every stamped block ("VMSHSTP1" little-endian).
pub const MAGIC: u64 = 0x3154_504D_4853_4D56;
const CHECK_XOR: u64 = 0xA5A5_A5A5_A5A5_A5A5;

fn fill(block: u64, seq: u64, i: u64) -> u64 {
    block.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ seq.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ i.wrapping_mul(0x1656_67B1_9E37_79F9)
}

/// Builds the stamp the guest writes for `block` at `seq` (used by tests).
pub fn make_block(block: u64, seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(BLOCK);
    let words = [MAGIC, block, seq, MAGIC ^ block ^ seq ^ CHECK_XOR];
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
    for i in 4..(BLOCK / 8) as u64 {
        out.extend_from_slice(&fill(block, seq, i).to_le_bytes());
    }
    out
}

/// Checks one block's bytes; returns its sequence number, or `None` when it is not a valid
/// stamp of block number `block`.
pub fn check_block(buf: &[u8], block: u64) -> Option<u64> {
    if buf.len() != BLOCK {
        return None;
    }
    let w = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[i * 8..i * 8 + 8]);
        u64::from_le_bytes(b)
    };
    let seq = w(2);
    if w(0) != MAGIC || w(1) != block || w(3) != (MAGIC ^ block ^ seq ^ CHECK_XOR) {
        return None;
    }
    (4..BLOCK / 8)
        .all(|i| w(i) == fill(block, seq, i as u64))
        .then_some(seq)
}

/// Result of verifying a raw image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StampReport {
    /// Blocks checked.
    pub blocks: u64,
    /// Smallest sequence number found.
    pub min_seq: u64,
    /// Largest sequence number found.
    pub max_seq: u64,
}

/// Why verification failed.
#[derive(Debug, thiserror::Error)]
pub enum StampError {
    /// Reading the image failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// Image path.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// A block holds no valid stamp.
    #[error("block {block} (offset {offset:#x}) holds no valid stamp")]
    Invalid {
        /// Block number.
        block: u64,
        /// Byte offset.
        offset: u64,
    },
    /// A block's stamp is older than the floor the guest had logged.
    #[error("block {block} (offset {offset:#x}) has sequence {seq}, older than the logged floor {floor}")]
    Stale {
        /// Block number.
        block: u64,
        /// Byte offset.
        offset: u64,
        /// Sequence found.
        seq: u64,
        /// Floor logged.
        floor: u64,
    },
}

/// Verifies that every block of `[0, blocks)` (`None` = the whole file) of the raw image at
/// `path` holds a valid stamp with sequence ≥ `floor`.
pub fn verify_raw(path: &Path, blocks: Option<u64>, floor: u64) -> Result<StampReport, StampError> {
    let io = |source| StampError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path).map_err(io)?);
    let total = match blocks {
        Some(b) => b,
        None => std::fs::metadata(path).map_err(io)?.len() / BLOCK as u64,
    };
    let mut buf = vec![0u8; BLOCK];
    let (mut lo, mut hi) = (u64::MAX, 0);
    for b in 0..total {
        f.read_exact(&mut buf).map_err(io)?;
        let offset = b * BLOCK as u64;
        let seq = check_block(&buf, b).ok_or(StampError::Invalid { block: b, offset })?;
        if seq < floor {
            return Err(StampError::Stale {
                block: b,
                offset,
                seq,
                floor,
            });
        }
        lo = lo.min(seq);
        hi = hi.max(seq);
    }
    Ok(StampReport {
        blocks: total,
        min_seq: if total == 0 { 0 } else { lo },
        max_seq: hi,
    })
}

/// The last `VMSHIFT-SEQ <floor> <dev>` floor logged for device `dev` in a serial log.
pub fn last_floor(serial_log: &str, dev: &str) -> Option<u64> {
    serial_log.lines().rev().find_map(|l| {
        let rest = l.trim().strip_prefix("VMSHIFT-SEQ ")?;
        let mut it = rest.split_whitespace();
        let n = it.next()?.parse().ok()?;
        (it.next()? == dev).then_some(n)
    })
}

/// The sequence number of the last batch the guest logged for device `dev`
/// (the `last=<seq>` field of `VMSHIFT-SEQ` lines).
pub fn last_written(serial_log: &str, dev: &str) -> Option<u64> {
    serial_log.lines().rev().find_map(|l| {
        let rest = l.trim().strip_prefix("VMSHIFT-SEQ ")?;
        let mut it = rest.split_whitespace();
        let _floor = it.next()?;
        if it.next()? != dev {
            return None;
        }
        it.next()?.strip_prefix("last=")?.parse().ok()
    })
}

/// Number of `VMSHIFT-SEQ` lines logged for device `dev` (batches written and flushed).
pub fn batches_logged(serial_log: &str, dev: &str) -> usize {
    serial_log
        .lines()
        .filter(|l| {
            let mut it = l.split_whitespace();
            it.next() == Some("VMSHIFT-SEQ") && it.nth(1) == Some(dev)
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn stamp_roundtrip_and_tamper_detection() {
        let mut b = make_block(7, 42);
        assert_eq!(check_block(&b, 7), Some(42));
        assert_eq!(check_block(&b, 8), None, "wrong block number");
        b[4000] ^= 1;
        assert_eq!(check_block(&b, 7), None, "torn block");
        assert_eq!(check_block(&[0u8; BLOCK], 0), None, "zeroes are no stamp");
    }

    #[test]
    fn verify_raw_enforces_the_floor() {
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        for (b, s) in [(0u64, 5u64), (1, 9), (2, 6)] {
            f.write_all(&make_block(b, s)).expect("write");
        }
        f.flush().expect("flush");
        let r = verify_raw(f.path(), None, 5).expect("valid");
        assert_eq!(
            r,
            StampReport {
                blocks: 3,
                min_seq: 5,
                max_seq: 9
            }
        );
        match verify_raw(f.path(), None, 6) {
            Err(StampError::Stale {
                block: 0, seq: 5, ..
            }) => {}
            other => panic!("expected stale block 0, got {other:?}"),
        }
    }

    #[test]
    fn last_floor_picks_the_device() {
        let log = "boot\nVMSHIFT-SEQ 3 vda last=20\nVMSHIFT-SEQ 1 vdb last=7\nVMSHIFT-SEQ 4 vda last=21\ngarbage VMSHIFT-SEQ 9 vda\n";
        assert_eq!(last_floor(log, "vda"), Some(4));
        assert_eq!(last_written(log, "vda"), Some(21));
        assert_eq!(batches_logged(log, "vda"), 2);
        assert_eq!(last_floor(log, "vdb"), Some(1));
        assert_eq!(last_floor(log, "vdc"), None);
    }
}
