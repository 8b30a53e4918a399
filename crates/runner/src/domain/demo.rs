//! `vmshift demo`'s libvirt part: a persistent `type='qemu'` domain running the test guest
//! on a qcow2 and a raw disk under `/var/lib/libvirt/images/vmshift-demo`, moved live by a
//! domain job while it writes; then the domain is destroyed, its stamps are checked on the
//! new disks, and it is started again from its rewritten definition.

use crate::event::JobEvent;
use crate::handle::{ExitCode, JobCtx};
use crate::request::DomainRequest;
use crate::{Result, RunnerError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vmshift_libvirt::Libvirt;
use vmshift_qmp::stamp;

/// The demo domain's name.
const NAME: &str = "vmshift-demo";
/// Where the demo's datastores live: libvirt's default image directory, which QEMU (run as
/// `libvirt-qemu`) can reach.
const ROOT: &str = "/var/lib/libvirt/images/vmshift-demo";
/// Stamped blocks per disk (8 MiB).
const BLOCKS: u64 = 2048;

fn io(e: impl std::fmt::Display) -> RunnerError {
    RunnerError::msg(format!("demo (libvirt): {e}"))
}

/// Connects to `qemu:///system`, starting `virtlogd` and `libvirtd` first when no daemon
/// answers and this host has them (hosts without systemd); `None` when libvirt is absent.
fn connect(ctx: &JobCtx) -> Option<Libvirt> {
    if let Ok(lv) = Libvirt::open(Some("qemu:///system")) {
        return Some(lv);
    }
    let have = |b: &str| {
        ["/usr/sbin", "/usr/bin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(b).exists())
    };
    if !have("libvirtd") {
        return None;
    }
    ctx.em
        .say("vmshift demo (libvirt): starting virtlogd and libvirtd (no daemon answered)");
    for d in ["virtlogd", "libvirtd"] {
        let _ = std::process::Command::new(d).arg("-d").status();
    }
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        if let Ok(lv) = Libvirt::open(Some("qemu:///system")) {
            return Some(lv);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

fn domain_xml(root: &Path, qcow2: &Path, raw: &Path) -> String {
    let p = |x: &Path| x.display().to_string();
    format!(
        "<domain type='qemu'>
  <name>{NAME}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{k}</kernel>
    <initrd>{i}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 vmshift.mode=write vmshift.devs=vda,vdb vmshift.blocks={BLOCKS} vmshift.rate=2097152</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{q}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{r}'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <serial type='file'><source path='{s}'/><target port='0'/></serial>
    <console type='file'><source path='{s}'/><target type='serial' port='0'/></console>
    <memballoon model='none'/>
  </devices>
</domain>
",
        k = p(&root.join("vmlinuz")),
        i = p(&root.join("initrd.gz")),
        q = p(qcow2),
        r = p(raw),
        s = p(&root.join("serial.log")),
    )
}

fn wait_for(serial: &Path, what: impl Fn(&str) -> bool, secs: u64) -> Result<()> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        if what(&std::fs::read_to_string(serial).unwrap_or_default()) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(io(format!(
        "the guest did not log what was expected within {secs} s (see {})",
        serial.display()
    )))
}

/// Removes the demo domain of an earlier run, if any.
fn forget(lv: &Libvirt) {
    if let Ok(d) = lv.domain(NAME) {
        let _ = d.destroy();
        let _ = d.undefine();
    }
}

/// Sets up the datastores, the guest's kernel and disks, defines and starts the domain.
fn set_up(lv: &Libvirt, repo: &Path) -> Result<(PathBuf, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    forget(lv);
    let root = PathBuf::from(ROOT);
    let _ = std::fs::remove_dir_all(&root);
    let (a, b) = (root.join("datastore-a"), root.join("datastore-b"));
    for d in [&root, &a, &b] {
        std::fs::create_dir_all(d).map_err(io)?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
    }
    let guest = vmshift_qmp::testvm::Guest::build(repo).map_err(|e| {
        io(format!(
            "building the test guest (scripts/build-guest.sh): {e}"
        ))
    })?;
    std::fs::copy(&guest.kernel, root.join("vmlinuz")).map_err(io)?;
    std::fs::copy(&guest.initrd, root.join("initrd.gz")).map_err(io)?;
    let qcow2 = a.join("db01.qcow2");
    let raw = a.join("web01.raw");
    // Both disks start stamped (sequence 0), so every block checks before the guest's
    // first pass is over.
    let mut f = std::io::BufWriter::new(std::fs::File::create(&raw).map_err(io)?);
    for blk in 0..(64u64 << 20) / stamp::BLOCK as u64 {
        f.write_all(&stamp::make_block(blk, 0)).map_err(io)?;
    }
    f.flush().map_err(io)?;
    drop(f);
    let made = std::process::Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2)
        .status()
        .map_err(io)?;
    if !made.success() {
        return Err(io("qemu-img convert (making the qcow2 disk) failed"));
    }
    lv.define(&domain_xml(&root, &qcow2, &raw)).map_err(io)?;
    lv.domain(NAME).and_then(|d| d.start()).map_err(io)?;
    Ok((root, b))
}

/// Checks the guest's stamps on the moved disks (the domain is stopped): every block of the
/// written region holds a stamp no older than the last floor the guest logged.
fn check_stamps(ctx: &JobCtx, serial: &str, b: &Path) -> Result<()> {
    let raw = b.join("web01.raw");
    let qcow2 = b.join("db01.qcow2");
    let flat = b.join("db01.flat.raw");
    let conv = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&qcow2)
        .arg(&flat)
        .status()
        .map_err(io)?;
    if !conv.success() {
        return Err(io("qemu-img convert of the moved qcow2 failed"));
    }
    for (dev, img) in [("vda", &flat), ("vdb", &raw)] {
        let floor = stamp::last_floor(serial, dev).unwrap_or(0);
        let rep = stamp::verify_raw(img, Some(BLOCKS), floor)
            .map_err(|e| io(format!("the moved disk {dev} lost guest writes: {e}")))?;
        ctx.em.say(format!(
            "guest check: {dev}: the {} blocks the guest writes hold stamps >= its last logged sequence {floor} (newest {})",
            rep.blocks, rep.max_seq
        ));
        ctx.em.emit(JobEvent::GuestCheck {
            blocks: rep.blocks,
            disk_blocks: rep.blocks,
            floor,
            max_seq: rep.max_seq,
        });
    }
    let _ = std::fs::remove_file(&flat);
    Ok(())
}

/// Runs the libvirt demo; `Ok(None)` when libvirt is not installed (the part is skipped).
///
/// # Errors
/// The guest cannot be built or booted, libvirt refuses the domain, or a check fails.
pub(crate) fn run(ctx: &JobCtx, repo: &Path) -> Result<Option<ExitCode>> {
    let Some(lv) = connect(ctx) else {
        return Ok(None);
    };
    let (root, b) = set_up(&lv, repo)?;
    let serial = root.join("serial.log");
    wait_for(&serial, |s| s.contains("VMSHIFT-SEQ"), 60)?;
    ctx.em.say(format!(
        "vmshift demo (libvirt): domain {NAME} runs on {}/datastore-a (qcow2 vda, raw vdb) and writes 2 MiB/s to each; moving it to {} through libvirt",
        root.display(),
        b.display()
    ));
    let mut req = DomainRequest::new(NAME, b.clone());
    req.connect = Some("qemu:///system".into());
    req.ready_timeout = Some(300);
    req.report = Some(root.join("report.md"));
    let code = super::job::run(ctx, &req)?;
    let dom = lv.domain(NAME).map_err(io)?;
    if code == 0 {
        // Every block rewritten since the pivot (the floor passes the newest sequence of
        // then) before the plug is pulled: the whole region proves the new disks.
        let log = std::fs::read_to_string(&serial).unwrap_or_default();
        let at_pivot: Vec<u64> = ["vda", "vdb"]
            .iter()
            .map(|d| stamp::last_written(&log, d).unwrap_or(0))
            .collect();
        wait_for(
            &serial,
            |s| {
                ["vda", "vdb"]
                    .iter()
                    .zip(&at_pivot)
                    .all(|(d, p)| stamp::last_floor(s, d).is_some_and(|f| f > *p))
            },
            120,
        )?;
        dom.destroy().map_err(io)?;
        let log = std::fs::read_to_string(&serial).unwrap_or_default();
        check_stamps(ctx, &log, &b)?;
        std::fs::write(&serial, "").map_err(io)?;
        dom.start().map_err(io)?;
        wait_for(&serial, |s| s.contains("VMSHIFT-BOOTED"), 60)?;
        ctx.em.say(format!(
            "guest check: {NAME} booted again from its definition, which now names {}",
            b.display()
        ));
    }
    forget(&lv);
    Ok(Some(code))
}
