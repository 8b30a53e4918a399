//! A bandwidth limit changed while the copy runs (`CopyHooks::rate`): a raw image copied
//! under 8 MiB/s, raised to 64 MiB/s from another thread midway, copies clearly faster
//! after the change (measured from the engine's counters), and the copy is identical.

mod common;
use common::*;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use vmshift_copy::{copy_image_with, CopyHooks, Counters};
use vmshift_core::RateLimit;
use vmshift_image::chain::LayerFormat;

const M: u64 = 1 << 20;
const SIZE: u64 = 48 * M;

/// Bytes/s between the first samples at or after `from` and at or before `to`.
fn rate_between(samples: &[(Duration, u64)], from: Duration, to: Duration) -> f64 {
    let a = samples
        .iter()
        .find(|s| s.0 >= from)
        .expect("a sample after from");
    let b = samples
        .iter()
        .rev()
        .find(|s| s.0 <= to)
        .expect("a sample before to");
    assert!(b.0 > a.0, "no time between {a:?} and {b:?}");
    (b.1 - a.1) as f64 / (b.0 - a.0).as_secs_f64()
}

#[test]
fn a_limit_raised_mid_copy_speeds_the_copy_up() {
    let dir = tempfile::tempdir().unwrap();
    let src_path = dir.path().join("src.raw");
    // Dense, non-zero data: every chunk is read, charged to the limit and written.
    let data: Vec<u8> = (0..SIZE)
        .map(|i| u8::try_from(i % 251 + 1).unwrap())
        .collect();
    std::fs::write(&src_path, &data).unwrap();
    let src = open(&src_path);
    let extents = src.extents(0, SIZE, false).unwrap();
    let dst_path = dir.path().join("dst.raw");
    let target = new_target(&dst_path, LayerFormat::Raw, SIZE, false);
    let mut opts = copy_opts(M, 4096, false);
    opts.hash = false;
    opts.bwlimit = 1; // ignored: the hook's limit wins
    let limit = RateLimit::new(8 * M);
    let hooks = CopyHooks {
        rate: Some(&limit),
        ..CopyHooks::default()
    };
    let counters = Counters::default();
    let finished = AtomicBool::new(false);
    let start = Instant::now();
    let raise_at = Duration::from_secs(2);
    let (samples, changed_at) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut v = Vec::new();
            while !finished.load(Ordering::Relaxed) {
                v.push((start.elapsed(), counters.done.load(Ordering::Relaxed)));
                std::thread::sleep(Duration::from_millis(20));
            }
            v.push((start.elapsed(), counters.done.load(Ordering::Relaxed)));
            v
        });
        let raiser = s.spawn(|| {
            std::thread::sleep(raise_at);
            limit.set(64 * M);
            start.elapsed()
        });
        copy_image_with(
            &src,
            &extents,
            &target,
            &opts,
            &hooks,
            &AtomicBool::new(false),
            &counters,
        )
        .unwrap();
        finished.store(true, Ordering::Relaxed);
        (sampler.join().unwrap(), raiser.join().unwrap())
    });
    target.sync().unwrap();
    let end = samples.last().unwrap().0;
    assert!(
        end > changed_at,
        "the copy ended before the raise ({end:?})"
    );
    let before = rate_between(&samples, Duration::from_millis(500), changed_at);
    let after = rate_between(&samples, changed_at + Duration::from_millis(100), end);
    eprintln!(
        "before {:.1} MiB/s, after {:.1} MiB/s (raised at {changed_at:?}, done at {end:?})",
        before / M as f64,
        after / M as f64
    );
    assert!(
        after >= 3.0 * before,
        "after the raise {after:.0} B/s, before {before:.0} B/s"
    );
    run(&[
        "qemu-img",
        "compare",
        "-q",
        "-f",
        "raw",
        "-F",
        "raw",
        src_path.to_str().unwrap(),
        dst_path.to_str().unwrap(),
    ]);
}
