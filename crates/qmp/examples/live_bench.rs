//! Measures the live driver with the real test guest writing: time to ready per disk size and
//! `pivot_ms` over repeated moves.
//!
//! ```text
//! cargo run -p vmshift-qmp --example live_bench -- [SIZE_MIB ...] [--runs N] [--rate BYTES_PER_S] [--limit BYTES_PER_S]
//! ```
//! Defaults: sizes 256 1024 4096, 5 pivots on the smallest size, guest writing 4 MiB/s, no
//! bandwidth limit.
//! Needs root only if the images' directory does; uses `$TMPDIR` (several GiB for 4096).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use vmshift_qmp::stamp;
use vmshift_qmp::testvm::{Disk, Guest, TestVm};
use vmshift_qmp::{LiveMigration, LiveOptions};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn stamped_raw(path: &Path, size: u64) -> Res<()> {
    let mut f = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(path)?);
    for b in 0..size / stamp::BLOCK as u64 {
        f.write_all(&stamp::make_block(b, 0))?;
    }
    f.flush()?;
    Ok(())
}

fn main() -> Res<()> {
    let mut sizes: Vec<u64> = Vec::new();
    let mut runs = 5usize;
    let mut rate: u64 = 4 << 20;
    let mut limit: Option<u64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().ok_or("--runs N")?.parse()?,
            "--rate" => rate = args.next().ok_or("--rate BYTES")?.parse()?,
            "--limit" => limit = Some(args.next().ok_or("--limit BYTES")?.parse()?),
            s => sizes.push(s.parse()?),
        }
    }
    if sizes.is_empty() {
        sizes = vec![256, 1024, 4096];
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()?;
    let guest = Guest::build(&repo)?;
    let mut pivots: Vec<f64> = Vec::new();
    for (i, mib) in sizes.iter().enumerate() {
        let dir = tempfile::tempdir()?;
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::create_dir(&a)?;
        std::fs::create_dir(&b)?;
        let src = a.join("bench.raw");
        stamped_raw(&src, mib << 20)?;
        let vm = TestVm::boot(
            dir.path(),
            &guest,
            &[Disk {
                path: src,
                format: "raw",
            }],
            &format!("vmshift.rate={rate}"),
        )?;
        vm.wait_serial("VMSHIFT-SEQ", Duration::from_secs(30))?;
        let mut qmp = vm.qmp()?;
        let n = if i == 0 { runs } else { 1 };
        for r in 0..n {
            let dest: PathBuf = if r % 2 == 0 { b.clone() } else { a.clone() };
            let mut opts = LiveOptions::new(&dest);
            opts.delete_source = true;
            opts.bwlimit = limit;
            let plan = LiveMigration::plan(&mut qmp, &opts)?;
            let t = Instant::now();
            let before = stamp::batches_logged(&vm.serial_log(), "vda");
            let out = LiveMigration::run(&mut qmp, &plan, &mut |_| {}, &AtomicBool::new(false))?;
            let during = stamp::batches_logged(&vm.serial_log(), "vda") - before;
            let d = &out.disks[0];
            println!(
                "size {mib} MiB run {r}: mode {} (guest {} B/s, restarts {}), time_to_ready {} ms, pivot {:.3} ms, total {} ms, guest batches during move {during}",
                d.copy_mode,
                d.guest_write_rate,
                d.restarts,
                d.time_to_ready_ms,
                d.pivot_ms,
                t.elapsed().as_millis()
            );
            pivots.push(d.pivot_ms);
        }
        drop(qmp);
        drop(vm);
    }
    pivots.sort_by(|x, y| x.total_cmp(y));
    if !pivots.is_empty() {
        println!(
            "pivot_ms over {} runs: median {:.3}, max {:.3}, min {:.3}",
            pivots.len(),
            pivots[pivots.len() / 2],
            pivots[pivots.len() - 1],
            pivots[0]
        );
    }
    Ok(())
}
