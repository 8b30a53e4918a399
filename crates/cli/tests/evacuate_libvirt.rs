//! `vmshift evacuate --plan` with the real libvirtd (started by the harness when none
//! answers): the disks of a shut-off domain are one group that moves offline, together.

mod libvirt_support;

use libvirt_support::*;
use serde_json::Value;

#[test]
fn a_shut_off_domains_two_disks_are_one_offline_group_in_one_wave() {
    let lab = Lab::new();
    lab.define(&lab.xml(&two_disks(&lab), "vda,vdb", ""));
    std::fs::write(lab.path("a/lone.raw"), vec![7u8; 1 << 20]).unwrap();
    let config = lab.path("config.toml");
    std::fs::write(
        &config,
        format!(
            "datastores = [{{ name = \"old\", root = {:?} }}, {{ name = \"new\", root = {:?} }}]\n",
            s(&lab.path("a")),
            s(&lab.path("b"))
        ),
    )
    .unwrap();
    let out = lab
        .vmshift()
        .arg("--config")
        .arg(&config)
        .args([
            "evacuate",
            "old",
            "--to",
            "new",
            "--plan",
            "--json",
            "--connect",
            URI,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["libvirt"]["reachable"], true, "{plan:#}");
    let moves = plan["moves"].as_array().unwrap();
    let find = |n: &str| {
        moves
            .iter()
            .find(|m| m["path"].as_str().unwrap().ends_with(n))
            .unwrap_or_else(|| panic!("no {n}: {plan:#}"))
    };
    let (d1, d2, lone) = (find("a/d1.qcow2"), find("a/d2.raw"), find("a/lone.raw"));
    let group = format!("vm:{}", lab.name);
    for d in [d1, d2] {
        assert_eq!(d["group"], group.as_str(), "{d}");
        assert_eq!(d["vms"], serde_json::json!([lab.name]), "{d}");
        assert_eq!(d["kind"], "offline", "{d}");
        assert_eq!(d["target"], "new", "{d}");
    }
    assert_eq!(d1["wave"], d2["wave"]);
    assert_eq!(d1["format"], "qcow2");
    assert_eq!(d2["format"], "raw");
    assert!(lone["group"].is_null(), "{lone}");
    assert!(lone["vms"].as_array().unwrap().is_empty());
    // The domain is untouched.
    assert_eq!(lab.state(), "shut off");
    assert!(listing(&lab.path("b")).is_empty());
}
