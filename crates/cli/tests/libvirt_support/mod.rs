//! Support for the libvirt integration tests: the daemon (started here when none answers,
//! stopped when the last test using it ends), per-test labs (directories libvirt-qemu can
//! traverse, a unique domain name, a guard that destroys and undefines it), `virsh`, domain
//! XML, stamped images, serial-log waits and the guest's stamps on the host.
#![allow(dead_code, missing_docs)]

use serde_json::Value;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use vmshift_qmp::stamp;
use vmshift_qmp::testvm::Guest;

/// The connection every test uses, named explicitly.
pub const URI: &str = "qemu:///system";
pub const MIB: u64 = 1 << 20;
/// Generous bound on every wait (polled at 100 ms).
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// Blocks of the stamped region (`vmshift.blocks`): 8 MiB.
pub const REGION: u64 = 2048;
const POLL: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------
// The daemons

struct Daemons {
    users: usize,
    /// Daemons this process started: (pid file, pid), in start order.
    started: Vec<(&'static str, i32)>,
}

static DAEMONS: Mutex<Daemons> = Mutex::new(Daemons {
    users: 0,
    started: Vec::new(),
});

/// Holds libvirtd up for a test. When the last holder drops, the daemons the harness started
/// are stopped; a daemon that was already running is left alone.
pub struct DaemonRef(());

fn virsh_answers() -> bool {
    Command::new("virsh")
        .args(["-c", URI, "version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The live pid in `pidfile` whose process is `comm`, if any.
fn pid_alive(pidfile: &str, comm: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let c = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (c.trim() == comm).then_some(pid)
}

/// Starts `prog -d` unless its pid file names a live process; returns the new pid.
fn start_daemon(prog: &'static str, pidfile: &'static str) -> Option<i32> {
    if pid_alive(pidfile, prog).is_some() {
        return None;
    }
    let st = Command::new(prog).arg("-d").status().expect(prog);
    assert!(st.success(), "{prog} -d failed: {st}");
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        if let Some(pid) = pid_alive(pidfile, prog) {
            return Some(pid);
        }
        std::thread::sleep(POLL);
    }
    panic!("{prog} -d wrote no live pid to {pidfile}");
}

/// Makes sure `virsh -c qemu:///system` answers (starting virtlogd and libvirtd if needed).
pub fn daemon() -> DaemonRef {
    let mut d = DAEMONS.lock().unwrap_or_else(|p| p.into_inner());
    if d.users == 0 && !virsh_answers() {
        for (prog, pidfile) in [
            ("virtlogd", "/run/virtlogd.pid"),
            ("libvirtd", "/run/libvirtd.pid"),
        ] {
            if let Some(pid) = start_daemon(prog, pidfile) {
                d.started.push((pidfile, pid));
            }
        }
        let t = Instant::now();
        while !virsh_answers() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "libvirtd does not answer on {URI} 20 s after starting it"
            );
            std::thread::sleep(POLL);
        }
    }
    d.users += 1;
    DaemonRef(())
}

impl Drop for DaemonRef {
    fn drop(&mut self) {
        let mut d = DAEMONS.lock().unwrap_or_else(|p| p.into_inner());
        d.users -= 1;
        if d.users > 0 {
            return;
        }
        // libvirtd first, then virtlogd; only the pids this harness started.
        while let Some((pidfile, pid)) = d.started.pop() {
            let comm = if pidfile.contains("libvirtd") {
                "libvirtd"
            } else {
                "virtlogd"
            };
            if pid_alive(pidfile, comm) != Some(pid) {
                continue;
            }
            // SAFETY: kill(2) on a pid this harness started and just checked.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10)
                && Path::new(&format!("/proc/{pid}")).exists()
            {
                std::thread::sleep(POLL);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// virsh and processes

/// `virsh -c qemu:///system ARGS`.
pub fn virsh(args: &[&str]) -> Output {
    Command::new("virsh")
        .args(["-c", URI])
        .args(args)
        .output()
        .expect("run virsh")
}

/// [`virsh`], asserting success; returns stdout.
pub fn virsh_ok(args: &[&str]) -> String {
    let o = virsh(args);
    assert!(
        o.status.success(),
        "virsh {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs a program, asserting success; returns stdout.
pub fn run(prog: &str, args: &[&str]) -> String {
    let o = Command::new(prog).args(args).output().expect(prog);
    assert!(
        o.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo")
}

fn guest() -> &'static Guest {
    static G: OnceLock<Guest> = OnceLock::new();
    G.get_or_init(|| Guest::build(&repo()).expect("build the test guest"))
}

/// The NDJSON events of a `--json` run.
pub fn events(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The report of a `--json` run (`Null` when there is none).
pub fn report(out: &Output) -> Value {
    events(out)
        .into_iter()
        .rfind(|e| e["event"] == "report")
        .map_or(Value::Null, |e| e["report"].clone())
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Names of the files in `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Polls `f` every 100 ms until it is true or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out after {timeout:?}: {what}");
        std::thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------------------
// Images

/// A raw image of `size` bytes whose every 4 KiB block holds a valid stamp with sequence 0
/// (so the guest's floor 0 holds before its first pass).
pub fn stamped_raw(path: &Path, size: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    for b in 0..size / stamp::BLOCK as u64 {
        f.write_all(&stamp::make_block(b, 0)).expect("write");
    }
    f.flush().expect("flush");
}

/// [`stamped_raw`] as a qcow2 image.
pub fn stamped_qcow2(path: &Path, size: u64) {
    let tmp = path.with_extension("stamp-tmp");
    stamped_raw(&tmp, size);
    run(
        "qemu-img",
        &[
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "qcow2",
            s(&tmp),
            s(path),
        ],
    );
    std::fs::remove_file(&tmp).expect("rm");
}

/// `qemu-img info -U --output=json` (with `--backing-chain`: an array).
pub fn img_info(path: &Path, chain: bool) -> Value {
    let mut a = vec!["info", "-U", "--output=json"];
    if chain {
        a.push("--backing-chain");
    }
    a.push(s(path));
    serde_json::from_str(&run("qemu-img", &a)).expect("qemu-img info json")
}

/// `qemu-img compare` says the two images hold the same guest-visible content.
pub fn same_content(a: &Path, fa: &str, b: &Path, fb: &str) -> bool {
    Command::new("qemu-img")
        .args(["compare", "-U", "-f", fa, "-F", fb, s(a), s(b)])
        .status()
        .expect("qemu-img compare")
        .success()
}

pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("stat").blocks() * 512
}

// ---------------------------------------------------------------------------------------
// The lab: one test's directory and domain

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A disk of a domain definition.
pub struct DiskXml(pub String);

impl DiskXml {
    /// A file-backed disk.
    pub fn file(dev: &str, path: &Path, fmt: &str) -> DiskXml {
        DiskXml(format!(
            "<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/><source file='{}'/><target dev='{dev}' bus='virtio'/></disk>",
            path.display()
        ))
    }

    /// A disk given as a pool volume.
    pub fn volume(dev: &str, pool: &str, vol: &str, fmt: &str) -> DiskXml {
        DiskXml(format!(
            "<disk type='volume' device='disk'><driver name='qemu' type='{fmt}'/><source pool='{pool}' volume='{vol}'/><target dev='{dev}' bus='virtio'/></disk>"
        ))
    }

    /// A shareable raw file disk.
    pub fn shareable(dev: &str, path: &Path) -> DiskXml {
        DiskXml(format!(
            "<disk type='file' device='disk'><driver name='qemu' type='raw' cache='none'/><source file='{}'/><target dev='{dev}' bus='virtio'/><shareable/></disk>",
            path.display()
        ))
    }

    /// A qcow2 overlay whose definition states its qcow2 backing file.
    pub fn overlay(dev: &str, top: &Path, base: &Path) -> DiskXml {
        DiskXml(format!(
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/><backingStore type='file'><format type='qcow2'/><source file='{}'/><backingStore/></backingStore><target dev='{dev}' bus='virtio'/></disk>",
            top.display(),
            base.display()
        ))
    }
}

/// One test's world: a 0755 temp dir (`a/` sources, `b/` destination), a unique domain name,
/// copies of the guest kernel and initrd, the serial log. Dropping it destroys and undefines
/// the domain and any pool it defined, then releases the daemon.
pub struct Lab {
    pub dir: PathBuf,
    pub name: String,
    pub serial: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pools: Mutex<Vec<String>>,
    marks: AtomicUsize,
    _tmp: tempfile::TempDir,
    _daemon: DaemonRef,
}

fn mkdir_755(p: &Path) {
    std::fs::create_dir_all(p).expect("mkdir");
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

impl Lab {
    pub fn new() -> Lab {
        let daemon = daemon();
        let tmp = tempfile::Builder::new()
            .prefix("vmshift-lv-")
            .tempdir_in(std::env::temp_dir())
            .expect("tempdir");
        let dir = tmp.path().canonicalize().expect("canonical");
        mkdir_755(&dir);
        // Every directory above must be traversable by libvirt-qemu too.
        let mut up = dir.parent();
        while let Some(p) = up {
            let mode = std::fs::metadata(p).expect("stat").permissions().mode();
            assert!(
                mode & 0o001 != 0,
                "{} is not traversable by libvirt-qemu (mode {mode:o})",
                p.display()
            );
            up = p.parent();
        }
        for d in ["a", "b", "guest"] {
            mkdir_755(&dir.join(d));
        }
        let g = guest();
        let kernel = dir.join("guest/vmlinuz");
        let initrd = dir.join("guest/initrd.gz");
        std::fs::copy(&g.kernel, &kernel).expect("copy kernel");
        std::fs::copy(&g.initrd, &initrd).expect("copy initrd");
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        Lab {
            serial: dir.join("serial.log"),
            name: format!("vmshift-t-{}-{n}", std::process::id()),
            dir,
            kernel,
            initrd,
            pools: Mutex::new(Vec::new()),
            marks: AtomicUsize::new(0),
            _tmp: tmp,
            _daemon: daemon,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// A domain definition with `disks`, the guest stamping `devs` (`vda,vdb`) with extra
    /// kernel parameters `params` (e.g. `vmshift.rate=1048576`).
    pub fn xml(&self, disks: &[DiskXml], devs: &str, params: &str) -> String {
        let disks: String = disks.iter().map(|d| d.0.as_str()).collect();
        format!(
            "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel><initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 vmshift.mode=write vmshift.devs={devs} vmshift.blocks={REGION} {params}</cmdline></os>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    {disks}
    <serial type='file'><source path='{serial}'/><target port='0'/></serial>
    <console type='file'><source path='{serial}'/><target type='serial' port='0'/></console>
    <memballoon model='none'/>
  </devices>
</domain>
",
            name = self.name,
            kernel = self.kernel.display(),
            initrd = self.initrd.display(),
            serial = self.serial.display(),
        )
    }

    fn xml_file(&self, xml: &str) -> PathBuf {
        let f = self.path("domain.xml");
        std::fs::write(&f, xml).expect("write xml");
        f
    }

    /// `virsh define` (persistent, shut off).
    pub fn define(&self, xml: &str) {
        let f = self.xml_file(xml);
        virsh_ok(&["define", s(&f)]);
    }

    /// `virsh create` (transient, running); waits for the guest's first batches.
    pub fn create(&self, xml: &str) {
        let f = self.xml_file(xml);
        virsh_ok(&["create", s(&f)]);
        self.wait_writing();
    }

    /// `virsh start`; waits for this boot's `VMSHIFT-BOOTED` (whether libvirt truncated the
    /// serial log or appended to it).
    pub fn start(&self) {
        let mark = self.mark_serial();
        virsh_ok(&["start", &self.name]);
        self.wait_booted_after(&mark);
    }

    /// [`Lab::start`], then waits until the guest has logged its first batches.
    pub fn start_writing(&self) {
        self.start();
        self.wait_writing();
    }

    fn wait_writing(&self) {
        wait_until("the guest logs VMSHIFT-SEQ", TIMEOUT, || {
            self.serial_log().contains("VMSHIFT-SEQ")
        });
    }

    pub fn destroy(&self) {
        virsh_ok(&["destroy", &self.name]);
    }

    pub fn state(&self) -> String {
        virsh_ok(&["domstate", &self.name]).trim().to_owned()
    }

    /// `virsh dumpxml --inactive`.
    pub fn inactive_xml(&self) -> String {
        virsh_ok(&["dumpxml", "--inactive", &self.name])
    }

    /// `virsh domblklist`: (target, source) pairs.
    pub fn domblklist(&self) -> Vec<(String, String)> {
        virsh_ok(&["domblklist", &self.name])
            .lines()
            .skip_while(|l| !l.starts_with('-'))
            .skip(1)
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((it.next()?.to_owned(), it.next()?.to_owned()))
            })
            .collect()
    }

    /// The source `domblklist` names for `dev`.
    pub fn source_of(&self, dev: &str) -> String {
        self.domblklist()
            .into_iter()
            .find(|(t, _)| t == dev)
            .unwrap_or_else(|| panic!("domblklist has no {dev}"))
            .1
    }

    /// Defines and starts a dir pool at `dir` (created 0755); undefined on drop.
    pub fn pool(&self, tag: &str, dir: &Path) -> String {
        mkdir_755(dir);
        let name = format!("{}-{tag}", self.name);
        virsh_ok(&["pool-define-as", &name, "dir", "--target", s(dir)]);
        self.pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.clone());
        virsh_ok(&["pool-start", &name]);
        name
    }

    // -- vmshift

    /// `vmshift` with this lab's state directory.
    pub fn vmshift(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vmshift"));
        c.env("VMSHIFT_STATE_DIR", self.path("state"));
        c
    }

    /// `vmshift migrate --domain NAME --connect URI ARGS --json`.
    pub fn migrate(&self, args: &[&str]) -> Output {
        self.vmshift()
            .args(["migrate", "--domain", &self.name, "--connect", URI])
            .args(args)
            .arg("--json")
            .output()
            .expect("run vmshift")
    }

    /// `vmshift check --domain NAME --connect URI ARGS`.
    pub fn check(&self, args: &[&str]) -> Output {
        self.vmshift()
            .args(["check", "--domain", &self.name, "--connect", URI])
            .args(args)
            .output()
            .expect("run vmshift")
    }

    /// `vmshift info --domain NAME --json`, parsed.
    pub fn info(&self) -> Value {
        let out = self
            .vmshift()
            .args(["info", "--domain", &self.name, "--connect", URI, "--json"])
            .output()
            .expect("run vmshift");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        serde_json::from_slice(&out.stdout).expect("info json")
    }

    // -- the serial console

    pub fn serial_log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Appends a unique marker line to the serial log (the domain must not be running) so a
    /// later boot's output can be told from an earlier one's whether or not libvirt
    /// truncates the file.
    pub fn mark_serial(&self) -> String {
        let n = self.marks.fetch_add(1, Ordering::SeqCst);
        let mark = format!("HOST-MARK {} {n}", self.name);
        if self.serial.exists() {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&self.serial)
                .expect("open serial log");
            writeln!(f, "\n{mark}").expect("append mark");
        }
        mark
    }

    /// The serial output of the boot that followed `mark`.
    pub fn log_after(&self, mark: &str) -> String {
        let log = self.serial_log();
        match log.find(mark) {
            Some(i) => log[i + mark.len()..].to_owned(), // appended
            None => log,                                 // truncated (or new)
        }
    }

    fn wait_booted_after(&self, mark: &str) {
        wait_until("VMSHIFT-BOOTED on the serial console", TIMEOUT, || {
            self.log_after(mark).contains("VMSHIFT-BOOTED")
        });
        assert!(
            !self.log_after(mark).contains("VMSHIFT-ERROR"),
            "{}",
            self.log_after(mark)
        );
    }

    pub fn batches(&self, dev: &str) -> usize {
        stamp::batches_logged(&self.serial_log(), dev)
    }

    /// Waits until the guest logged `n` more batches for `dev` than `since`.
    pub fn wait_batches(&self, dev: &str, since: usize, n: usize) {
        wait_until(
            &format!("{n} more VMSHIFT-SEQ batches on {dev}"),
            TIMEOUT,
            || self.batches(dev) >= since + n,
        );
    }

    pub fn last_written(&self, dev: &str) -> u64 {
        stamp::last_written(&self.serial_log(), dev).expect("a logged batch")
    }

    pub fn floor(&self, dev: &str) -> u64 {
        stamp::last_floor(&self.serial_log(), dev).expect("a logged floor")
    }

    /// Checks the guest's stamps on `img` (`fmt` raw or qcow2, read through its backing
    /// chain): every block of the image is a valid stamp, every block of the region is at
    /// least the floor `dev` logged last, and the region holds the last batch the guest
    /// logged (`max_seq ≥ last=`). Call after the domain stopped.
    pub fn verify_stamps(&self, img: &Path, fmt: &str, dev: &str) -> stamp::StampReport {
        let floor = self.floor(dev);
        let last = self.last_written(dev);
        let raw = if fmt == "raw" {
            img.to_path_buf()
        } else {
            let n = self.marks.fetch_add(1, Ordering::SeqCst);
            let raw = self.path(&format!("check-{n}.raw"));
            run(
                "qemu-img",
                &[
                    "convert",
                    "-q",
                    "-U",
                    "-f",
                    fmt,
                    "-O",
                    "raw",
                    s(img),
                    s(&raw),
                ],
            );
            raw
        };
        stamp::verify_raw(&raw, None, 0)
            .unwrap_or_else(|e| panic!("{}: not every block is a stamp: {e}", img.display()));
        let rep = stamp::verify_raw(&raw, Some(REGION), floor).unwrap_or_else(|e| {
            panic!(
                "{} ({dev}): a flushed guest write is missing: {e}",
                img.display()
            )
        });
        assert!(
            rep.max_seq >= last,
            "{} ({dev}): newest stamp {} but the guest logged batch {last} as flushed",
            img.display(),
            rep.max_seq
        );
        if raw != img {
            let _ = std::fs::remove_file(&raw);
        }
        rep
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.name]);
        let _ = virsh(&[
            "undefine",
            "--nvram",
            "--snapshots-metadata",
            "--checkpoints-metadata",
            &self.name,
        ]);
        let _ = virsh(&["undefine", &self.name]);
        for p in self
            .pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = virsh(&["pool-destroy", &p]);
            let _ = virsh(&["pool-undefine", &p]);
        }
    }
}

/// A small tmpfs mounted at `dir` while the guard lives.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mkdir");
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "vmshift-test",
                s(dir),
            ],
        );
        Tmpfs(dir.to_path_buf())
    }

    /// Free bytes.
    pub fn free(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.0).expect("statvfs");
        st.f_bavail * st.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A qcow2 `a/d1.qcow2` (vda) and a raw `a/d2.raw` (vdb), 32 MiB each, stamped.
pub fn two_disks(lab: &Lab) -> Vec<DiskXml> {
    let d1 = lab.path("a/d1.qcow2");
    let d2 = lab.path("a/d2.raw");
    stamped_qcow2(&d1, 32 * MIB);
    stamped_raw(&d2, 32 * MIB);
    vec![
        DiskXml::file("vda", &d1, "qcow2"),
        DiskXml::file("vdb", &d2, "raw"),
    ]
}

impl Lab {
    /// Waits until the guest has rewritten every block of `devs` since now (each floor
    /// passes the newest sequence logged now); returns that sequence.
    pub fn wait_full_pass(&self, devs: &[&str]) -> u64 {
        let at = devs.iter().map(|d| self.last_written(d)).max().unwrap_or(0);
        wait_until("a full stamp pass", 3 * TIMEOUT, || {
            let log = self.serial_log();
            devs.iter()
                .all(|d| stamp::last_floor(&log, d).is_some_and(|f| f > at))
        });
        at
    }
}
