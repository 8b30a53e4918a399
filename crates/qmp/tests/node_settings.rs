//! The pivot keeps how the VM's disk behaves: cache mode and detect-zeroes of the source node
//! are set on the target nodes (a `-drive ...,cache=none` disk stays O_DIRECT).

use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use vmshift_qmp::{LiveMigration, LiveOptions, Qmp};

#[test]
fn cache_none_and_detect_zeroes_survive_the_pivot() {
    let dir = tempfile::tempdir().expect("tmp");
    let img = dir.path().join("disk.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg("16M")
        .output()
        .expect("qemu-img");
    assert!(out.status.success());
    let sock = dir.path().join("qmp.sock");
    let mut vm = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35,accel=tcg",
            "-m",
            "64",
            "-nodefaults",
            "-display",
            "none",
            "-S",
        ])
        .arg("-drive")
        .arg(format!(
            "file={},format=qcow2,if=virtio,id=d0,cache=none,discard=unmap,detect-zeroes=unmap",
            img.display()
        ))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu");
    for _ in 0..200 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let dest = dir.path().join("dst");
    std::fs::create_dir(&dest).expect("mkdir");
    let result = (|| {
        let mut qmp = Qmp::connect(&sock, Duration::from_secs(10))?;
        let opts = LiveOptions::new(&dest);
        let plan = LiveMigration::plan(&mut qmp, &opts)?;
        assert!(plan.disks[0].disk.cache_direct, "source seen as cache=none");
        LiveMigration::run(&mut qmp, &plan, &mut |_| {}, &AtomicBool::new(false))?;
        let blocks = qmp.execute("query-block", None)?;
        Ok::<_, Box<dyn std::error::Error>>(blocks)
    })();
    let _ = vm.kill();
    let _ = vm.wait();
    let blocks = result.expect("live move");
    let ins = &blocks[0]["inserted"];
    assert_eq!(
        ins["file"],
        dest.join("disk.qcow2").display().to_string(),
        "{ins}"
    );
    assert_eq!(ins["cache"]["direct"], true, "{ins}");
    assert_eq!(ins["detect_zeroes"], "unmap", "{ins}");
}
