//! Micro-benchmarks of the copy engine's hot paths: zero detection, hashing, extent planning.
//!
//! `cargo bench -p vmshift-copy` (optionally followed by a filter word: `zero`, `hash`,
//! `plan`). A plain harness with no dependencies: each case runs for about half a second
//! after a warm-up and prints the median time per iteration and the throughput, so a
//! regression shows as a falling GB/s. Numbers are per core.

use std::hint::black_box;
use std::time::{Duration, Instant};
use vmshift_copy::plan::plan_units;
use vmshift_copy::zero::{is_zero, zero_runs};
use vmshift_copy::{chunk_digest, SparseDigest};
use vmshift_core::extent::{Extent, ExtentKind};

const M: u64 = 1 << 20;
const M_USIZE: usize = 1 << 20;

/// Deterministic non-zero pseudo-random bytes (xorshift64*).
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Runs `f` repeatedly for ~0.5 s after a warm-up; prints the median per iteration and, when
/// `bytes` > 0, the throughput in GB/s (10^9 bytes).
fn bench(filter: &Option<String>, name: &str, bytes: u64, mut f: impl FnMut()) {
    if filter.as_deref().is_some_and(|w| !name.contains(w)) {
        return;
    }
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(100) {
        f();
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(500) || samples.len() < 5 {
        let t = Instant::now();
        f();
        samples.push(t.elapsed());
    }
    samples.sort();
    let med = samples[samples.len() / 2];
    let rate = if bytes > 0 {
        format!("{:8.2} GB/s", bytes as f64 / med.as_secs_f64() / 1e9)
    } else {
        String::new()
    };
    println!("{name:<44} {:>12.3?} /iter {rate}", med);
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let chunk = 8 * M_USIZE;
    let data = random_bytes(chunk, 7);
    let zeroes = vec![0u8; chunk];
    let mut mixed = random_bytes(chunk, 9);
    for blk in mixed.chunks_mut(64 << 10).step_by(2) {
        blk.fill(0);
    }

    // Zero detection.
    bench(
        &filter,
        "zero: is_zero 4 KiB blocks, random 8 MiB",
        chunk as u64,
        || {
            black_box(data.chunks(4096).filter(|b| is_zero(b)).count());
        },
    );
    bench(
        &filter,
        "zero: is_zero 4 KiB blocks, zero 8 MiB",
        chunk as u64,
        || {
            black_box(zeroes.chunks(4096).filter(|b| is_zero(b)).count());
        },
    );
    for (label, buf) in [("random", &data), ("zero", &zeroes), ("half zero", &mixed)] {
        for g in [4096usize, 65536] {
            bench(
                &filter,
                &format!("zero: zero_runs {} KiB, {label} 8 MiB", g >> 10),
                chunk as u64,
                || {
                    black_box(zero_runs(black_box(buf), g));
                },
            );
        }
    }

    // Hashing (the digest's per-block BLAKE3, and a chunk digest for the journal).
    bench(
        &filter,
        "hash: SparseDigest::add, random 8 MiB",
        chunk as u64,
        || {
            let d = SparseDigest::new(chunk as u64);
            d.add(0, black_box(&data));
            black_box(d.hex());
        },
    );
    bench(
        &filter,
        "hash: SparseDigest::add, zero 8 MiB",
        chunk as u64,
        || {
            let d = SparseDigest::new(chunk as u64);
            d.add(0, black_box(&zeroes));
        },
    );
    bench(
        &filter,
        "hash: chunk_digest, random 8 MiB",
        chunk as u64,
        || {
            black_box(chunk_digest(0, black_box(&data)));
        },
    );
    bench(&filter, "hash: blake3::hash, random 1 MiB", M, || {
        black_box(blake3::hash(black_box(&data[..M_USIZE])));
    });

    // Extent planning.
    let sparse: Vec<Extent> = scattered(20 << 30, 8 * M, 20);
    bench(&filter, "plan: 20 GiB, 128 x 8 MiB extents", 0, || {
        black_box(plan_units(black_box(&sparse), 8 * M, true));
    });
    let fragmented: Vec<Extent> = scattered(1 << 40, 64 << 10, 50);
    bench(
        &filter,
        &format!("plan: 1 TiB, {} x 64 KiB extents", fragmented.len() / 2),
        0,
        || {
            black_box(plan_units(black_box(&fragmented), 8 * M, true));
        },
    );
    bench(&filter, "plan: clip 8 MiB windows over 1 TiB", 0, || {
        let mut n = 0;
        for i in (0..(1u64 << 40)).step_by(1 << 30) {
            n += vmshift_copy::plan::clip(&fragmented, i, i + 8 * M).len();
        }
        black_box(n);
    });
}

/// `size` bytes with one data extent of `len` in every `every` slots of `len`, the rest zero.
fn scattered(size: u64, len: u64, every: u64) -> Vec<Extent> {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos + every * len <= size {
        let data = pos + ((i * 7) % (every - 1)) * len;
        if data > pos {
            out.push(Extent {
                offset: pos,
                len: data - pos,
                kind: ExtentKind::Zero,
            });
        }
        out.push(Extent {
            offset: data,
            len,
            kind: ExtentKind::Data,
        });
        pos = data + len;
        let next = (i + 1) * every * len;
        if next > pos {
            out.push(Extent {
                offset: pos,
                len: next - pos,
                kind: ExtentKind::Zero,
            });
        }
        pos = next;
        i += 1;
    }
    if pos < size {
        out.push(Extent {
            offset: pos,
            len: size - pos,
            kind: ExtentKind::Zero,
        });
    }
    out
}
