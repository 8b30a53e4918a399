//! `vmshift demo`: the main job on a bundled default. Builds a real sample VM disk (a qcow2
//! holding an ext4 filesystem with real files, made with mkfs.ext4 -d and qemu-img) and
//! migrates it between two demo datastores under the state directory; then boots the test
//! guest and moves its disk live while it writes, checking every block it wrote.

use crate::error::IoContext;
use crate::handle::{ExitCode, JobCtx};
use crate::live::migrate::{run_migrate_with, RunExtras};
use crate::request::{CopyMode, ImageFormat, LiveRequest, OfflineRequest};
use crate::state::state_dir;
use crate::{JobEvent, Result, RunnerError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn demo_io(e: impl std::fmt::Display) -> RunnerError {
    RunnerError::msg(format!("demo: {e}"))
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .io_context(|| {
            format!(
                "cannot run {:?} (run scripts/install-deps.sh)",
                cmd.get_program()
            )
        })
        .map_err(demo_io)?;
    if !out.status.success() {
        return Err(RunnerError::msg(format!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Builds `<state>/demo/datastore-a/web01.qcow2` (256 MiB virtual ext4 with files).
fn build_sample(root: &Path) -> Result<PathBuf> {
    let src_store = root.join("datastore-a");
    let stage = root.join("rootfs");
    let _ = std::fs::remove_dir_all(root);
    for d in [
        &src_store,
        &stage.join("etc"),
        &stage.join("var/www"),
        &stage.join("var/lib/app"),
    ] {
        std::fs::create_dir_all(d).map_err(demo_io)?;
    }
    std::fs::write(stage.join("etc/hostname"), "web01\n").map_err(demo_io)?;
    std::fs::write(
        stage.join("etc/motd"),
        "Moved by vmshift: storage migration with proof.\n",
    )
    .map_err(demo_io)?;
    let page: String = (0..2000)
        .map(|i| format!("<p>line {i} of the demo site</p>\n"))
        .collect();
    std::fs::write(stage.join("var/www/index.html"), page).map_err(demo_io)?;
    // 8 MiB of incompressible application data, deterministic (xorshift).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let blob: Vec<u8> = (0..8 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[3]
        })
        .collect();
    std::fs::write(stage.join("var/lib/app/data.bin"), blob).map_err(demo_io)?;
    let raw = root.join("web01.raw");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "web01-root", "-d"])
        .arg(&stage)
        .arg(&raw)
        .arg("256M"))?;
    let qcow2 = src_store.join("web01.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2))?;
    std::fs::remove_file(&raw).map_err(demo_io)?;
    std::fs::remove_dir_all(&stage).map_err(demo_io)?;
    Ok(qcow2)
}

/// The offline demo job: the sample disk from datastore-a to datastore-b (qcow2).
pub(crate) fn offline(ctx: &JobCtx) -> Result<ExitCode> {
    let root = state_dir()?.join("demo");
    let disk = build_sample(&root)?;
    let dest = root.join("datastore-b");
    std::fs::create_dir_all(&dest).map_err(demo_io)?;
    ctx.em.say(format!(
        "vmshift demo: sample VM disk {} (qcow2 with an ext4 filesystem) → {}",
        disk.display(),
        dest.display()
    ));
    let mut req = OfflineRequest::new(disk, dest);
    req.format = Some(ImageFormat::Qcow2);
    req.report = Some(root.join("report.md"));
    crate::offline::job::run_job(ctx, &req, None)
}

/// The source tree whose `scripts/build-guest.sh` builds the test guest.
pub(crate) fn repo() -> PathBuf {
    std::env::var_os("VMSHIFT_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// The live demo job: boots the test guest (built and cached by `scripts/build-guest.sh`)
/// on a 64 MiB disk, lets it write stamped blocks, moves the disk live while it writes,
/// shuts the guest down and checks every block of the target against the last sequence the
/// guest logged. Returns the migration's exit status.
///
/// # Errors
/// When the guest cannot be built or booted, or the report cannot be written.
pub(crate) fn live(ctx: &JobCtx) -> Result<ExitCode> {
    use vmshift_qmp::stamp;
    use vmshift_qmp::testvm::{Disk, Guest, TestVm};
    let root = state_dir()?.join("demo-live");
    let _ = std::fs::remove_dir_all(&root);
    let (a, b) = (root.join("datastore-a"), root.join("datastore-b"));
    std::fs::create_dir_all(&a).map_err(demo_io)?;
    std::fs::create_dir_all(&b).map_err(demo_io)?;
    let guest = Guest::build(&repo()).map_err(|e| {
        demo_io(format!(
            "building the test guest (scripts/build-guest.sh): {e}"
        ))
    })?;
    let disk = a.join("web01.raw");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&disk).map_err(demo_io)?);
        for blk in 0..(64u64 << 20) / stamp::BLOCK as u64 {
            f.write_all(&stamp::make_block(blk, 0)).map_err(demo_io)?;
        }
        f.flush().map_err(demo_io)?;
    }
    let mut vm = TestVm::boot(
        &root,
        &guest,
        &[Disk {
            path: disk.clone(),
            format: "raw",
        }],
        "vmshift.rate=2097152 vmshift.blocks=2048",
    )
    .map_err(demo_io)?;
    vm.wait_serial("VMSHIFT-SEQ", Duration::from_secs(60))
        .map_err(demo_io)?;
    ctx.em.say(format!(
        "vmshift demo (live): guest running on {} and writing 2 MiB/s (first 8 MiB); moving it to {}",
        disk.display(),
        b.display()
    ));
    let mut req = LiveRequest::new(vm.qmp_path.clone(), b.clone());
    req.copy_mode = CopyMode::Auto;
    req.ready_timeout = Some(300);
    req.report = Some(root.join("report.md"));
    let (code, _) = run_migrate_with(ctx, &req, RunExtras::default())?;
    let mut qmp = vm.qmp().map_err(demo_io)?;
    let before = stamp::batches_logged(&vm.serial_log(), "vda");
    // Let the guest finish more than one full pass over its 8 MiB region on the new disk.
    vm.wait_batches("vda", before, 150, Duration::from_secs(120))
        .map_err(demo_io)?;
    vm.quit(&mut qmp).map_err(demo_io)?;
    if code == 0 {
        let target = b.join("web01.raw");
        let floor = stamp::last_floor(&vm.serial_log(), "vda").unwrap_or(0);
        // The guest writes the first 2048 blocks; every block must hold a valid stamp, and
        // those of the written region one no older than the last floor the guest logged.
        let whole = stamp::verify_raw(&target, None, 0)
            .map_err(|e| demo_io(format!("the moved disk is damaged: {e}")))?;
        let rep = stamp::verify_raw(&target, Some(2048), floor)
            .map_err(|e| demo_io(format!("the moved disk lost guest writes: {e}")))?;
        ctx.em.say(format!(
            "guest check: all {} blocks of {} hold valid stamps; the {} the guest writes are >= its last logged sequence {floor} (newest {})",
            whole.blocks,
            target.display(),
            rep.blocks,
            rep.max_seq
        ));
        ctx.em.emit(JobEvent::GuestCheck {
            blocks: rep.blocks,
            disk_blocks: whole.blocks,
            floor,
            max_seq: rep.max_seq,
        });
    }
    Ok(code)
}

/// The libvirt demo job ([`crate::domain`]): `Ok(None)` when libvirt is not installed or
/// this vmshift was built without it.
///
/// # Errors
/// The guest cannot be built or booted, libvirt refuses the domain, or a check fails.
pub(crate) fn libvirt(ctx: &JobCtx) -> Result<Option<ExitCode>> {
    #[cfg(feature = "libvirt")]
    {
        crate::domain::demo::run(ctx, &repo())
    }
    #[cfg(not(feature = "libvirt"))]
    {
        let _ = ctx;
        Ok(None)
    }
}
