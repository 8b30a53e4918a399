//! Test and demo support: the cached test guest (`scripts/build-guest.sh`) and QEMU processes
//! owned by the caller. Every VM runs with `-accel tcg` (KVM is not assumed anywhere).
//!
//! Disk `i` of a VM is attached as protocol node `disk{i}-file`, format node `disk{i}` and
//! guest device `virtio-blk-pci` with id `vd{i}` (the layout of the shared live cases).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::Qmp;
use crate::error::QmpError;
use crate::stamp;

/// Kernel and initramfs of the test guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guest {
    /// The Debian cloud kernel.
    pub kernel: PathBuf,
    /// The busybox initramfs with the stamper.
    pub initrd: PathBuf,
}

/// Failures of the test-VM helpers.
#[derive(Debug, thiserror::Error)]
pub enum TestVmError {
    /// `scripts/build-guest.sh` failed.
    #[error("building the test guest failed: {0}")]
    Build(String),
    /// Starting or stopping QEMU failed.
    #[error("QEMU process: {0}")]
    Process(#[from] std::io::Error),
    /// QMP failed.
    #[error(transparent)]
    Qmp(#[from] QmpError),
    /// The guest did not log what was expected in time.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        timeout: Duration,
    },
}

impl Guest {
    /// Builds the guest (cached under `$VMSHIFT_GUEST_CACHE` or `<repo>/.guest-cache`) with
    /// `<repo>/scripts/build-guest.sh` and returns its files.
    pub fn build(repo: &Path) -> Result<Guest, TestVmError> {
        let out = Command::new(repo.join("scripts/build-guest.sh")).output()?;
        if !out.status.success() {
            return Err(TestVmError::Build(
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let dir = PathBuf::from(stdout.trim().lines().last().unwrap_or_default());
        Ok(Guest {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.gz"),
        })
    }
}

/// One disk of a test VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Image path.
    pub path: PathBuf,
    /// Format driver (`raw`, `qcow2`).
    pub format: &'static str,
}

/// A QEMU process owned by the caller; killed (by its own pid) when dropped.
#[derive(Debug)]
pub struct TestVm {
    child: Option<Child>,
    /// QMP socket path.
    pub qmp_path: PathBuf,
    /// Serial console log path.
    pub serial: PathBuf,
}

impl TestVm {
    /// Boots `guest` with `disks` and extra kernel parameters (e.g. `vmshift.rate=1048576`);
    /// sockets and logs go to `dir`.
    pub fn boot(
        dir: &Path,
        guest: &Guest,
        disks: &[Disk],
        params: &str,
    ) -> Result<TestVm, TestVmError> {
        let append = format!("console=ttyS0 quiet panic=-1 {params}");
        let mut extra = vec!["-m".into(), "256".into(), "-kernel".into()];
        extra.push(guest.kernel.clone().into_os_string());
        extra.push("-initrd".into());
        extra.push(guest.initrd.clone().into_os_string());
        extra.push("-append".into());
        extra.push(append.into());
        TestVm::start(dir, disks, &extra)
    }

    /// Starts a guest-less VM (CPUs paused, like the cases' `env_start.sh`) with `disks`.
    pub fn paused(dir: &Path, disks: &[Disk]) -> Result<TestVm, TestVmError> {
        TestVm::start(dir, disks, &["-S".into(), "-m".into(), "64".into()])
    }

    fn start(
        dir: &Path,
        disks: &[Disk],
        extra: &[std::ffi::OsString],
    ) -> Result<TestVm, TestVmError> {
        let qmp_path = dir.join("qmp.sock");
        let serial = dir.join("serial.log");
        let _ = std::fs::remove_file(&qmp_path);
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-machine",
            "q35,accel=tcg",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
        ]);
        cmd.arg("-serial").arg(format!("file:{}", serial.display()));
        cmd.arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()));
        for (i, d) in disks.iter().enumerate() {
            let file = json!({"driver": "file", "node-name": format!("disk{i}-file"), "filename": d.path, "discard": "unmap"});
            let fmt = json!({"driver": d.format, "node-name": format!("disk{i}"), "file": format!("disk{i}-file"), "discard": "unmap"});
            cmd.arg("-blockdev")
                .arg(file.to_string())
                .arg("-blockdev")
                .arg(fmt.to_string());
            cmd.arg("-device")
                .arg(format!("virtio-blk-pci,drive=disk{i},id=vd{i}"));
        }
        cmd.args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn()?;
        Ok(TestVm {
            child: Some(child),
            qmp_path,
            serial,
        })
    }

    /// Connects a new QMP session (waits up to 20 s for the socket; 60 s command timeout).
    pub fn qmp(&self) -> Result<Qmp, QmpError> {
        let mut q = Qmp::connect(&self.qmp_path, Duration::from_secs(20))?;
        q.set_timeout(Duration::from_secs(60));
        Ok(q)
    }

    /// The serial console log so far.
    pub fn serial_log(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// Waits until the serial log contains `needle`.
    pub fn wait_serial(&self, needle: &str, timeout: Duration) -> Result<(), TestVmError> {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if self.serial_log().contains(needle) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(TestVmError::Timeout {
            what: format!("{needle:?} on the serial console"),
            timeout,
        })
    }

    /// Waits until the guest logged `n` more batches for `dev` than `since`; returns the count.
    pub fn wait_batches(
        &self,
        dev: &str,
        since: usize,
        n: usize,
        timeout: Duration,
    ) -> Result<usize, TestVmError> {
        let t = Instant::now();
        loop {
            let c = stamp::batches_logged(&self.serial_log(), dev);
            if c >= since + n {
                return Ok(c);
            }
            if t.elapsed() > timeout {
                return Err(TestVmError::Timeout {
                    what: format!("{n} batches on {dev} (got {})", c - since),
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `quit` and waits for the process to exit.
    pub fn quit(&mut self, qmp: &mut Qmp) -> Result<(), TestVmError> {
        let _ = qmp.execute("quit", None);
        self.wait_exit(Duration::from_secs(30))
    }

    /// Waits for QEMU to exit by itself (e.g. the guest powered off).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<(), TestVmError> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        let t = Instant::now();
        while t.elapsed() < timeout {
            if child.try_wait()?.is_some() {
                self.child = None;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(TestVmError::Timeout {
            what: "QEMU to exit".into(),
            timeout,
        })
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
