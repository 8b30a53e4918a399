//! `vmshift serve` with a real libvirt domain: a domain move is gated like an image move —
//! its disks, its destination directory and a destination pool's directory must lie in the
//! service's datastores — and one inside them is planned.

mod libvirt_support;
mod serve_support;

use libvirt_support::{s, two_disks, Lab};
use serde_json::json;
use serve_support::Service;

/// A service over `datastores` (state and tokens under `root`).
fn service(root: &std::path::Path, datastores: &[&std::path::Path]) -> Service {
    let first = datastores[0];
    let list: Vec<String> = datastores.iter().map(|d| format!("\"{}\"", s(d))).collect();
    let config = serve_support::write_config(root, first, "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("datastores = [\"{}\"]", s(first)),
        &format!("datastores = [{}]", list.join(", ")),
    );
    std::fs::write(&config, text).unwrap();
    Service::start_with(root, &config, first)
}

#[test]
fn a_domain_move_is_gated_by_its_disks_destination_and_pool() {
    let lab = Lab::new();
    lab.define(&lab.xml(&two_disks(&lab), "vda,vdb", ""));
    let root = tempfile::tempdir().unwrap();

    // Only the destination is a datastore: the domain's disks are not.
    let svc = service(root.path(), &[&lab.path("b")]);
    let (st, v) = svc.post(
        "/api/v1/check",
        &json!({"kind": "domain", "domain": lab.name, "to": lab.path("b")}),
    );
    assert_eq!(st, 403, "{v}");
    let detail = v["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("disk vda of {}", lab.name)) && detail.contains("outside"),
        "{detail}"
    );
    drop(svc);

    // Both are: the check plans the move; a pool outside them is refused.
    let svc = service(root.path(), &[&lab.path("a"), &lab.path("b")]);
    let (st, v) = svc.post(
        "/api/v1/check",
        &json!({"kind": "domain", "domain": lab.name, "to": lab.path("b")}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["go"], true, "{v}");
    let pool = lab.pool("elsewhere", &lab.path("elsewhere"));
    let (st, v) = svc.post(
        "/api/v1/jobs",
        &json!({"kind": "domain", "domain": lab.name, "pool": pool}),
    );
    assert_eq!(st, 403, "{v}");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("pool {pool}")),
        "{v}"
    );
    let (_, jobs) = svc.get("/api/v1/jobs?all=true");
    assert_eq!(jobs, json!([]), "nothing started");
    assert!(libvirt_support::listing(&lab.path("elsewhere")).is_empty());
}
