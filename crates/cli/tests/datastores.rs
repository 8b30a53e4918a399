//! `vmshift datastores`: the config file's named datastores with the real space of their
//! file systems, what the images on them allocate and a measured, cached latency.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Output;

/// Capacity and free bytes as statvfs reports them.
fn statvfs(root: &Path) -> (u64, u64) {
    let st = rustix::fs::statvfs(root).unwrap();
    (st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)
}

fn datastores(ws: &Ws, config: &Path, extra: &[&str]) -> Output {
    ws.vmshift()
        .arg("--config")
        .arg(config)
        .arg("datastores")
        .args(extra)
        .output()
        .unwrap()
}

fn json(out: &Output) -> Vec<Value> {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Two datastores on temp dirs: `fast` (a table with a 10% reserve) holding a sparse raw
/// image, a qcow2 image in a subdirectory and a text file; a plain path holding one qcow2.
/// Returns the config path and the images of each.
fn two_datastores(
    ws: &Ws,
) -> (
    std::path::PathBuf,
    Vec<std::path::PathBuf>,
    Vec<std::path::PathBuf>,
) {
    let (a, b) = (ws.mkdir("a"), ws.mkdir("b"));
    let raw = a.join("web01.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(64 * M).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&random_bytes(3 << 20, 7), 8 * M).unwrap();
    f.sync_all().unwrap();
    ws.mkdir("a/vm2");
    let q1 = a.join("vm2/disk0.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&q1), "1G"]);
    qemu_io("qcow2", &q1, &["write -P 0x5a 0 5M"]);
    std::fs::write(a.join("notes.txt"), vec![b'x'; 100_000]).unwrap();
    let q2 = b.join("db.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&q2), "2G"]);
    qemu_io("qcow2", &q2, &["write -P 0x11 1M 2M"]);
    let config = ws.path("config.toml");
    std::fs::write(
        &config,
        format!(
            "datastores = [\n  {{ name = \"fast\", kind = \"dir\", root = {:?}, reserve = \"10%\", max_copies = 4, bwlimit = \"100M\" }},\n  {:?},\n]\n",
            p(&a),
            p(&b)
        ),
    )
    .unwrap();
    (config, vec![raw, q1], vec![q2])
}

#[test]
fn json_lists_statvfs_space_the_images_allocation_and_a_measured_latency() {
    let ws = Ws::new();
    let (config, in_a, in_b) = two_datastores(&ws);
    let rows = json(&datastores(&ws, &config, &["--json"]));
    assert_eq!(rows.len(), 2);
    let (fast, plain) = (&rows[0], &rows[1]);
    assert_eq!(fast["name"], "fast");
    assert_eq!(fast["kind"], "dir");
    assert_eq!(fast["reserve"], "10%");
    assert_eq!(fast["max_copies"], 4);
    assert_eq!(fast["bwlimit_bytes_per_sec"], 100 * M);
    assert_eq!(plain["name"], p(&ws.path("b")));
    assert_eq!(plain["reserve"], 0);

    for (row, root, images) in [(fast, ws.path("a"), &in_a), (plain, ws.path("b"), &in_b)] {
        let (capacity, free) = statvfs(&root);
        assert_eq!(row["capacity_bytes"], capacity, "{row}");
        // Other processes write to the same file system meanwhile.
        let listed_free = row["free_bytes"].as_u64().unwrap();
        assert!(
            listed_free.abs_diff(free) < 256 * M,
            "{listed_free} vs {free}"
        );
        let allocated: u64 = images.iter().map(|i| allocated(i)).sum();
        assert!(allocated > 0);
        assert_eq!(row["allocated_by_images_bytes"], allocated, "{row}");
        assert_eq!(row["images"], images.len() as u64);
        assert!(row["latency_us"].as_u64().unwrap() > 0, "{row}");
        assert_eq!(
            row["latency_method"], "direct",
            "ext4 takes O_DIRECT: {row}"
        );
        assert_eq!(row["latency_cached"], false);
        assert!(
            row["error"].is_null() && row["probe_error"].is_null(),
            "{row}"
        );
        // The probe's temp file is gone.
        assert!(
            !listing(&root).iter().any(|n| n.contains("vmshift-probe")),
            "{:?}",
            listing(&root)
        );
    }
    let capacity = fast["capacity_bytes"].as_u64().unwrap();
    assert_eq!(fast["reserve_bytes"], capacity.div_ceil(10));
    assert_eq!(
        fast["usable_bytes"].as_u64().unwrap(),
        fast["free_bytes"]
            .as_u64()
            .unwrap()
            .saturating_sub(capacity.div_ceil(10))
    );

    // Listed again: the latency comes from the cache; --probe measures it again.
    let again = json(&datastores(&ws, &config, &["--json"]));
    assert_eq!(again[0]["latency_cached"], true);
    assert_eq!(again[0]["latency_us"], fast["latency_us"]);
    assert_eq!(again[0]["latency_measured_at"], fast["latency_measured_at"]);
    assert!(ws.path("state/datastore-latency.json").is_file());
    let probed = json(&datastores(&ws, &config, &["--json", "--probe"]));
    assert_eq!(probed[0]["latency_cached"], false);
    assert_eq!(probed[1]["latency_cached"], false);
}

#[test]
fn the_table_names_each_datastore_and_the_probe() {
    let ws = Ws::new();
    let (config, _, _) = two_datastores(&ws);
    let out = datastores(&ws, &config, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("LATENCY"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("fast ") && lines[1].contains(" µs"),
        "{text}"
    );
    assert!(lines[1].ends_with(p(&ws.path("a"))), "{text}");
    assert!(
        lines[2].contains(" µs") && lines[2].ends_with(p(&ws.path("b"))),
        "{text}"
    );
    assert!(
        lines[3].starts_with("latency: one 4 KiB O_DIRECT write + read"),
        "{text}"
    );
}

#[test]
fn a_missing_root_is_listed_with_its_error_and_exit_status_1() {
    let ws = Ws::new();
    let a = ws.mkdir("a");
    let config = ws.path("config.toml");
    let gone = ws.path("gone");
    std::fs::write(
        &config,
        format!(
            "datastores = [{:?}, {{ name = \"gone\", root = {:?} }}]\n",
            p(&a),
            p(&gone)
        ),
    )
    .unwrap();
    let out = datastores(&ws, &config, &["--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(rows[0]["error"].is_null());
    assert!(rows[1]["capacity_bytes"].is_null());
    let err = stderr(&out);
    assert!(
        err.contains("datastore gone: cannot read the datastore"),
        "{err}"
    );
    assert!(err.contains(p(&gone)) && err.lines().count() == 1, "{err}");
}

#[test]
fn a_bad_datastore_entry_names_the_file_and_line_and_exits_2() {
    let ws = Ws::new();
    let config = ws.path("config.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:8088\"\ndatastores = [{ name = \"x\", root = \"/srv\", reserve = \"150%\" }]\n",
    )
    .unwrap();
    let out = datastores(&ws, &config, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("config.toml (line 2)") && err.contains("more than 100%"),
        "{err}"
    );

    let out = ws
        .vmshift()
        .arg("--config")
        .arg(ws.path("none.toml"))
        .arg("datastores")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot read the configuration"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn no_datastores_configured_is_an_empty_list() {
    let ws = Ws::new();
    let config = ws.path("config.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:8088\"\n").unwrap();
    let out = datastores(&ws, &config, &["--json"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    let out = datastores(&ws, &config, &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("no datastores configured"));
}

/// `--to NAME`: a configured datastore's name stands for its root.
#[test]
fn migrate_to_a_datastore_name_lands_in_its_root_verified() {
    let ws = Ws::new();
    let (src, fast) = (ws.mkdir("src"), ws.mkdir("fast-root"));
    let img = src.join("web01.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&img), "64M"]);
    qemu_io("qcow2", &img, &["write -P 0x3c 1M 3M"]);
    let config = ws.path("config.toml");
    std::fs::write(
        &config,
        format!(
            "datastores = [{{ name = \"fast\", root = {:?} }}, {:?}]\n",
            p(&fast),
            p(&src)
        ),
    )
    .unwrap();
    // Run from the workspace, where no directory is called `fast`.
    let out = ws
        .vmshift()
        .current_dir(ws.path(""))
        .arg("--config")
        .arg(&config)
        .args(["migrate", p(&img), "--to", "fast", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = last_report(&out);
    let target = fast.join("web01.qcow2");
    assert_eq!(report["destination"]["path"], p(&target), "{report}");
    assert_eq!(report["verification"]["result"], "match", "{report}");
    assert_same_image(&img, &target);
}

#[test]
fn an_unknown_datastore_name_is_refused_in_one_line_naming_the_configured_ones() {
    let ws = Ws::new();
    let (src, fast) = (ws.mkdir("src"), ws.mkdir("fast-root"));
    let img = src.join("web01.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&img), "64M"]);
    let config = ws.path("config.toml");
    std::fs::write(
        &config,
        format!(
            "datastores = [{{ name = \"fast\", root = {:?} }}, {{ name = \"slow\", root = {:?} }}]\n",
            p(&fast),
            p(&src)
        ),
    )
    .unwrap();
    for cmd in ["migrate", "check"] {
        let out = ws
            .vmshift()
            .current_dir(ws.path(""))
            .arg("--config")
            .arg(&config)
            .args([cmd, p(&img), "--to", "fsat"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "{cmd}: {err}");
        assert!(err.contains("\"fsat\""), "{err}");
        assert!(err.contains("configured: fast, slow"), "{err}");
        assert!(listing(&fast).is_empty(), "{:?}", listing(&fast));
    }
}
