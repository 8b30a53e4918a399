//! `vmshift evacuate SOURCE_DS --to ... --plan`: the plan over real images on a source
//! directory and three target datastores of known sizes (tmpfs mounts, so their free space
//! is exact), placed by `vmshift_core::placement` and scheduled into waves.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

/// A raw image with `mib` MiB of data (all allocated).
fn raw(path: &Path, mib: u64, seed: u64) {
    std::fs::write(path, random_bytes(usize::try_from(mib * M).unwrap(), seed)).unwrap();
}

struct Setup {
    ws: Ws,
    config: PathBuf,
    src: PathBuf,
    _mounts: Vec<Tmpfs>,
}

/// Datastores `old` (a directory, the source), `a` (64 MiB), `b` (40 MiB), `c` (24 MiB).
/// On `old`: big.raw 30 MiB, mid.raw 10 MiB, huge.raw 70 MiB, a chain base.qcow2 (12 MiB
/// of data) + vm/top.qcow2 (2 MiB), and shared.qcow2, the backing file of c/ext.qcow2.
fn setup() -> Option<Setup> {
    if !is_root() {
        eprintln!("skipped: mounting tmpfs datastores needs root");
        return None;
    }
    let ws = Ws::new();
    let src = ws.mkdir("old");
    let mounts = vec![
        Tmpfs::mount(&ws.path("a"), "64M"),
        Tmpfs::mount(&ws.path("b"), "40M"),
        Tmpfs::mount(&ws.path("c"), "24M"),
    ];
    raw(&src.join("big.raw"), 30, 1);
    raw(&src.join("mid.raw"), 10, 2);
    raw(&src.join("huge.raw"), 70, 3);
    let base = src.join("base.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&base), "64M"]);
    qemu_io("qcow2", &base, &["write -P 0x11 0 12M"]);
    ws.mkdir("old/vm");
    let top = overlay(&src.join("vm"), "../base.qcow2", "top.qcow2");
    qemu_io("qcow2", &top, &["write -P 0x22 20M 2M"]);
    let shared = src.join("shared.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&shared), "16M"]);
    let ext = ws.path("c/ext.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        p(&shared),
        "-F",
        "qcow2",
        p(&ext),
    ]);
    let config = ws.path("config.toml");
    std::fs::write(
        &config,
        format!(
            "datastores = [\n  {{ name = \"old\", root = {:?} }},\n  {{ name = \"a\", root = {:?} }},\n  {{ name = \"b\", root = {:?}, max_copies = 1 }},\n  {{ name = \"c\", root = {:?} }},\n]\n",
            p(&src),
            p(&ws.path("a")),
            p(&ws.path("b")),
            p(&ws.path("c"))
        ),
    )
    .unwrap();
    Some(Setup {
        ws,
        config,
        src,
        _mounts: mounts,
    })
}

fn evacuate(s: &Setup, args: &[&str]) -> Output {
    s.ws.vmshift()
        .arg("--config")
        .arg(&s.config)
        .arg("evacuate")
        .args(args)
        // No libvirt daemon is consulted: nothing listens on that socket.
        .args([
            "--connect",
            "qemu+unix:///system?socket=/nonexistent/vmshift-libvirt",
        ])
        .output()
        .unwrap()
}

fn plan_json(s: &Setup, args: &[&str]) -> Value {
    let out = evacuate(s, args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn moved<'a>(plan: &'a Value, name: &str) -> Option<&'a Value> {
    plan["moves"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["path"].as_str().unwrap().ends_with(name))
}

#[test]
fn the_plan_places_images_by_free_space_keeps_a_chain_together_and_names_what_cannot_move() {
    let Some(s) = setup() else { return };
    let plan = plan_json(&s, &["old", "--to", "auto", "--plan", "--json"]);
    // Largest first: big (30 MiB) to a (64 MiB free), the chain (~14 MiB) to b (40), mid
    // (10 MiB) to a again (34 left against b's ~26 and c's ~24).
    let target = |n: &str| moved(&plan, n).map(|m| m["target"].as_str().unwrap().to_string());
    assert_eq!(target("big.raw").as_deref(), Some("a"), "{plan:#}");
    assert_eq!(target("mid.raw").as_deref(), Some("a"), "{plan:#}");
    assert_eq!(target("/base.qcow2").as_deref(), Some("b"), "{plan:#}");
    assert_eq!(target("vm/top.qcow2").as_deref(), Some("b"), "{plan:#}");
    let (base, top) = (
        moved(&plan, "/base.qcow2").unwrap(),
        moved(&plan, "vm/top.qcow2").unwrap(),
    );
    assert_eq!(base["group"], "chain:base.qcow2");
    assert_eq!(top["group"], base["group"]);
    assert_eq!(base["wave"], top["wave"], "a group moves as one job");
    assert_eq!(top["kind"], "offline");
    assert_eq!(top["format"], "qcow2");
    assert_eq!(top["virtual_size"], 64 * M);
    assert_eq!(top["target_path"], p(&s.ws.path("b/vm/top.qcow2")));
    assert_eq!(
        moved(&plan, "big.raw").unwrap()["allocated_bytes"],
        allocated(&s.src.join("big.raw"))
    );
    assert!(moved(&plan, "huge.raw").is_none());
    assert!(moved(&plan, "shared.qcow2").is_none());

    let unplaceable = plan["unplaceable"].as_array().unwrap();
    assert_eq!(unplaceable.len(), 2, "{plan:#}");
    let reason = |n: &str| {
        unplaceable
            .iter()
            .find(|u| u["path"].as_str().unwrap().ends_with(n))
            .map(|u| u["reason"].as_str().unwrap().to_string())
            .unwrap()
    };
    let huge = reason("huge.raw");
    assert!(huge.starts_with("needs 70.0 MiB"), "{huge}");
    assert!(huge.contains("(on a)"), "{huge}");
    assert_eq!(
        reason("shared.qcow2"),
        format!("stays: backing file of {}", p(&s.ws.path("c/ext.qcow2")))
    );

    // Waves: at most 2 at once (the default), b takes one copy at a time.
    let waves = plan["waves"].as_array().unwrap();
    assert!(waves.iter().all(|w| w.as_array().unwrap().len() <= 2));
    assert_eq!(plan["max_parallel"], 2);

    // Space before and after: what moves leaves the source and lands on its target.
    let ds = plan["datastores"].as_array().unwrap();
    let names: Vec<&str> = ds.iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["old", "a", "b", "c"]);
    let get = |d: &Value, k: &str| d[k].as_u64().unwrap();
    let into_a = allocated(&s.src.join("big.raw")) + allocated(&s.src.join("mid.raw"));
    assert_eq!(
        get(&ds[1], "free_before_bytes") - get(&ds[1], "free_after_bytes"),
        into_a
    );
    let into_b = allocated(&s.src.join("base.qcow2")) + allocated(&s.src.join("vm/top.qcow2"));
    assert_eq!(
        get(&ds[2], "free_before_bytes") - get(&ds[2], "free_after_bytes"),
        into_b
    );
    assert_eq!(
        get(&ds[3], "free_before_bytes"),
        get(&ds[3], "free_after_bytes")
    );
    assert_eq!(ds[0]["role"], "source");
    assert_eq!(
        get(&ds[0], "free_after_bytes") - get(&ds[0], "free_before_bytes"),
        into_a + into_b
    );
    assert_eq!(ds[2]["max_copies"], 1);
    assert_eq!(plan["libvirt"]["reachable"], false);
    // Nothing was written anywhere.
    assert_eq!(listing(&s.ws.path("a")), Vec::<String>::new());
}

#[test]
fn json_is_one_object_with_the_plan_fields() {
    let Some(s) = setup() else { return };
    let plan = plan_json(
        &s,
        &[
            "old",
            "--to",
            "b,c",
            "--plan",
            "--json",
            "--max-parallel",
            "1",
            "--keep-source",
        ],
    );
    let keys: Vec<&str> = plan
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for k in [
        "source",
        "source_root",
        "targets",
        "max_parallel",
        "keep_source",
        "libvirt",
        "moves",
        "unplaceable",
        "waves",
        "datastores",
        "notes",
    ] {
        assert!(keys.contains(&k), "{k} missing: {keys:?}");
    }
    assert_eq!(plan["source"], "old");
    assert_eq!(plan["targets"], serde_json::json!(["b", "c"]));
    assert_eq!(plan["max_parallel"], 1);
    assert_eq!(plan["keep_source"], true);
    for m in plan["moves"].as_array().unwrap() {
        for k in [
            "path",
            "format",
            "virtual_size",
            "allocated_bytes",
            "group",
            "vms",
            "kind",
            "target",
            "target_path",
            "wave",
        ] {
            assert!(m.get(k).is_some(), "{k} missing: {m}");
        }
        assert_ne!(m["target"], "a", "only the named targets: {m}");
    }
    // One at a time: every wave has one group.
    assert!(plan["waves"]
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w.as_array().unwrap().len() == 1));
    let old = &plan["datastores"][0];
    assert_eq!(
        old["free_before_bytes"], old["free_after_bytes"],
        "--keep-source"
    );
    // The table says the same things for people.
    let out = evacuate(&s, &["old", "--to", "auto", "--plan"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "IMAGE",
        "chain:base.qcow2",
        "stays: backing file of",
        "huge.raw",
        "FREE AFTER",
        "libvirt: not consulted",
        "plan only",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
}

#[test]
fn an_unknown_datastore_or_no_plan_flag_is_refused_with_exit_2_in_one_line() {
    let Some(s) = setup() else { return };
    for (args, want) in [
        (
            &["nosuch", "--to", "auto", "--plan"][..],
            "datastore \"nosuch\" is not configured (configured: old, a, b, c)",
        ),
        (
            &["old", "--to", "a,zz", "--plan"][..],
            "target datastore \"zz\" is not configured",
        ),
        (
            &["old", "--to", "old", "--plan"][..],
            "is the datastore being evacuated",
        ),
        (
            &["old", "--to", "auto"][..],
            "running an evacuation is not available yet; use --plan",
        ),
    ] {
        let out = evacuate(&s, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // The root path names the datastore as well as its name.
    let plan = plan_json(&s, &[p(&s.src), "--to", "auto", "--plan", "--json"]);
    assert_eq!(plan["source"], "old");
}
