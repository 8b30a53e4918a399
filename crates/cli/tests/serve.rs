//! `vmshift serve` against real images: the HTTP API's refusals (nothing started, nothing
//! written), a job run over HTTP and followed by SSE, a CLI job seen and cancelled through
//! the API, a job that outlives a restart of the service, metrics and the OpenAPI document.

mod common;
mod hook_support;
mod serve_support;

use common::{p, qemu_img, qemu_io, Ws, M};
use serde_json::{json, Value};
use serve_support::{Service, OPERATE, READ};
use std::time::Duration;

/// A qcow2 image in the service's datastore with `data_mib` MiB of data.
fn image(svc: &Service, name: &str, virtual_mib: u64, data_mib: u64) -> std::path::PathBuf {
    let img = svc.store.join(name);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        p(&img),
        &format!("{virtual_mib}M"),
    ]);
    qemu_io("qcow2", &img, &[&format!("write -P 0x5a 0 {data_mib}M")]);
    img
}

fn offline(source: &std::path::Path, to: &std::path::Path) -> Value {
    json!({"kind": "offline", "source": source, "to": to})
}

/// method, path, token, body, expected status, what the detail says.
type Case<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<String>,
    u16,
    &'a str,
);

#[test]
fn bad_requests_get_problems_with_the_right_status_and_start_nothing() {
    let ws = Ws::new();
    let svc = Service::start(ws.dir.path());
    let img = image(&svc, "a.qcow2", 16, 1);
    let dst = svc.store.join("dst");
    std::fs::create_dir_all(&dst).unwrap();
    let outside = ws.mkdir("outside");
    std::os::unix::fs::symlink(&outside, svc.store.join("escape")).unwrap();
    let good = offline(&img, &dst).to_string();

    let cases: Vec<Case> = vec![
        (
            "POST",
            "/api/v1/jobs",
            None,
            Some(good.clone()),
            401,
            "no bearer token",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some("not-a-known-token-at-all"),
            Some(good.clone()),
            401,
            "not known",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some(READ),
            Some(good.clone()),
            403,
            "read role",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some(OPERATE),
            Some("{\"kind\":".into()),
            400,
            "not a valid request",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some(OPERATE),
            Some(json!({"kind":"offline","source":img,"to":dst,"speed":1}).to_string()),
            422,
            "unknown field `speed`",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some(OPERATE),
            Some(offline(&outside.join("x.qcow2"), &dst).to_string()),
            403,
            "outside the service's datastores",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some(OPERATE),
            Some(offline(&img, &svc.store.join("escape/d")).to_string()),
            403,
            "outside",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some(OPERATE),
            Some(offline(&img, &svc.store.join("dst/../../outside")).to_string()),
            403,
            "\"..\" is not allowed",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some(OPERATE),
            Some(json!({"kind":"offline","source":img,"to":dst,"no_journal":true}).to_string()),
            400,
            "always journaled",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some(OPERATE),
            Some(
                json!({"kind":"offline","source":img,"to":dst,"report":outside.join("r.json")})
                    .to_string(),
            ),
            403,
            "report",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some(OPERATE),
            Some(format!(
                "{{\"kind\":\"offline\",\"source\":\"{}\",\"to\":\"{}\",\"pad\":\"{}\"}}",
                p(&img),
                p(&dst),
                "x".repeat(100_000)
            )),
            413,
            "too large",
        ),
        (
            "GET",
            "/api/v1/jobs/01a00000-0000-7000-8000-000000000000",
            Some(READ),
            None,
            404,
            "no job 01a00000-0000-7000-8000-000000000000: GET /api/v1/jobs?all=true lists",
        ),
        (
            "POST",
            "/api/v1/jobs/01a00000-0000-7000-8000-000000000000/cancel",
            Some(OPERATE),
            None,
            404,
            "no job",
        ),
        (
            "GET",
            "/api/v1/nothing",
            Some(READ),
            None,
            404,
            "no such endpoint: GET /api/v1/nothing",
        ),
        (
            "DELETE",
            "/api/v1/jobs",
            Some(OPERATE),
            None,
            405,
            "DELETE is not allowed",
        ),
        (
            "GET",
            "/api/v1/jobs?status=bogus",
            Some(READ),
            None,
            400,
            "a job is one of running",
        ),
        (
            "GET",
            "/api/v1/jobs//events",
            Some(READ),
            None,
            404,
            "no job",
        ),
        (
            "PATCH",
            "/api/v1/jobs/x",
            Some(OPERATE),
            Some("{\"bwlimit\":\"fast\"}".into()),
            422,
            "bwlimit",
        ),
    ];
    for (method, path, token, body, status, says) in cases {
        let (s, ct, v) = svc.call(method, path, token, body.as_deref());
        assert_eq!(s, status, "{method} {path}: {v}");
        assert_eq!(ct, "application/problem+json", "{method} {path}");
        assert_eq!(v["status"], status, "{v}");
        let detail = v["detail"].as_str().unwrap();
        assert!(detail.contains(says), "{method} {path}: {detail}");
        assert!(!detail.contains('\n'), "one line: {detail}");
    }
    // The scheme name is case-insensitive.
    let r = serve_support::agent(Duration::from_secs(30))
        .get(svc.url("/api/v1/jobs"))
        .header("Authorization", format!("bearer {READ}"))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // A body that is not declared JSON.
    let (s, _, v) = svc.call_as(
        "POST",
        "/api/v1/jobs",
        Some(OPERATE),
        Some(&good),
        "text/plain",
    );
    assert_eq!(s, 415, "{v}");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("Content-Type: application/json"),
        "{v}"
    );
    // Nothing was started and nothing written.
    let (s, jobs) = svc.get("/api/v1/jobs?all=true");
    assert_eq!(s, 200);
    assert_eq!(jobs, json!([]), "no job may exist");
    assert_eq!(std::fs::read_dir(&dst).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    // The read token's attempt was refused, not logged as a call; the operate ones were.
    let log = svc.stderr.lock().unwrap().clone();
    assert!(!log.contains("by token viewer"), "{log}");
    assert!(log.contains("POST /api/v1/jobs by token ops: 4"), "{log}");
    // A method the route does not have reached no handler: not logged as a call.
    let (s, _, _) = svc.call("DELETE", "/api/v1/jobs", Some(OPERATE), None);
    assert_eq!(s, 405);
    let log = svc.stderr.lock().unwrap().clone();
    assert!(!log.contains("DELETE /api/v1/jobs by token"), "{log}");
}

#[test]
fn a_job_started_over_http_is_verified_and_its_sse_stream_carries_the_cli_events() {
    let ws = Ws::new();
    let svc = Service::start(ws.dir.path());
    let img = image(&svc, "disk.qcow2", 256, 48);
    let dst = svc.store.join("new");
    std::fs::create_dir_all(&dst).unwrap();

    // The check first: the plan, nothing written; a read token may see it too.
    let (s, _, v) = svc.call(
        "POST",
        "/api/v1/check",
        Some(READ),
        Some(&offline(&img, &dst).to_string()),
    );
    assert_eq!((s, &v["go"]), (200, &json!(true)), "{v}");
    let (s, plan) = svc.post("/api/v1/check", &offline(&img, &dst));
    assert_eq!(s, 200, "{plan}");
    assert_eq!(plan["go"], true, "{plan}");
    assert!(
        plan["lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("48.0 MiB of data")),
        "{plan}"
    );
    assert_eq!(std::fs::read_dir(&dst).unwrap().count(), 0);

    let (s, started) = svc.post("/api/v1/jobs", &offline(&img, &dst));
    assert_eq!(s, 201, "{started}");
    let id = started["job_id"].as_str().unwrap().to_string();
    let events = svc.events(&id, Duration::from_secs(120));
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"job"), "{kinds:?}");
    assert_eq!(events[0]["job_id"], id.as_str());
    assert_eq!(kinds.last(), Some(&"report"), "{kinds:?}");
    let report = &events.last().unwrap()["report"];
    assert_eq!(report["status"], "succeeded");
    assert_eq!(report["verification"]["result"], "match");
    assert_eq!(report["bytes_copied"], 48 * M);

    // The same move by the CLI prints the same sequence of phase events.
    let phases = |evs: &[Value]| -> Vec<String> {
        evs.iter()
            .filter(|e| e["event"] == "phase")
            .map(|e| {
                format!(
                    "{}:{}",
                    e["phase"].as_str().unwrap(),
                    e["state"].as_str().unwrap()
                )
            })
            .collect()
    };
    let cli_dst = svc.store.join("cli");
    std::fs::create_dir_all(&cli_dst).unwrap();
    let out = ws
        .vmshift()
        .env("VMSHIFT_STATE_DIR", &svc.state)
        .args(["migrate", p(&img), "--to", p(&cli_dst), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let cli: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(phases(&events), phases(&cli));

    // The job as the API shows it: journal record, phases, report in three forms.
    let job = svc.wait_job(&id, 30, |v| v["status"] == "succeeded");
    assert_eq!(
        job["report"]["destination"]["path"],
        p(&dst.join("disk.qcow2"))
    );
    assert!(
        job["report_html"].as_str().unwrap().contains("<table>"),
        "{job}"
    );
    assert!(job["report_markdown"]
        .as_str()
        .unwrap()
        .contains("succeeded"));
    let names: Vec<&str> = job["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(names.first(), Some(&"check"));
    assert!(names.contains(&"verify"), "{names:?}");
    common::assert_same_image(&img, &dst.join("disk.qcow2"));

    // Both jobs are in the one journal; the API lists them newest first.
    let (_, jobs) = svc.get("/api/v1/jobs");
    let ids: Vec<&str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{jobs}");
    assert_eq!(ids[1], id);

    // Metrics: the job's bytes, both jobs by kind and status, the phase histogram.
    let m = svc.text("/metrics");
    assert!(
        m.contains(&format!("vmshift_copied_bytes_total {}", 48 * M)),
        "{m}"
    );
    assert!(
        m.contains("vmshift_jobs{kind=\"offline\",status=\"succeeded\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("vmshift_phase_duration_seconds_count{phase=\"copy\"} 1"),
        "{m}"
    );
    assert!(m.contains("vmshift_verification_failures_total 0"), "{m}");

    // Datastores: the images and what they allocate.
    let (_, ds) = svc.get("/api/v1/datastores");
    let d = &ds[0];
    assert_eq!(d["images"], 3, "{ds}");
    let alloc = common::allocated(&img)
        + common::allocated(&dst.join("disk.qcow2"))
        + common::allocated(&cli_dst.join("disk.qcow2"));
    assert_eq!(d["allocated_by_images_bytes"], alloc, "{ds}");
    assert!(d["free_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn a_refused_check_is_a_422_with_the_plan_and_writes_nothing() {
    let ws = Ws::new();
    let svc = Service::start(ws.dir.path());
    let img = image(&svc, "a.qcow2", 16, 1);
    let (s, v) = svc.post("/api/v1/jobs", &offline(&img, &svc.store.join("missing/")));
    assert_eq!(s, 422, "{v}");
    assert!(
        v["detail"].as_str().unwrap().contains("does not exist"),
        "{v}"
    );
    assert!(v["lines"].as_array().unwrap().len() > 2, "{v}");
    let (_, jobs) = svc.get("/api/v1/jobs?all=true");
    assert_eq!(jobs, json!([]));
}

#[test]
fn a_cli_job_shows_up_in_the_api_streams_from_the_journal_and_is_cancelled_from_it() {
    let ws = Ws::new();
    let svc = Service::start(ws.dir.path());
    let img = image(&svc, "big.qcow2", 512, 256);
    let dst = svc.store.join("to");
    std::fs::create_dir_all(&dst).unwrap();
    // The CLI's job, in the service's state directory, copying slowly.
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("vmshift"))
        .args([
            "migrate",
            p(&img),
            "--to",
            p(&dst),
            "--bwlimit",
            "8M",
            "--json",
        ])
        .env("VMSHIFT_STATE_DIR", &svc.state)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(60);
    let id = loop {
        let (_, jobs) = svc.get("/api/v1/jobs");
        if let Some(j) = jobs.as_array().and_then(|a| a.first()) {
            if j["status"] == "running" && j["now"]["done_bytes"].as_u64().unwrap_or(0) > 0 {
                assert!(j["pid"].as_u64().is_some(), "{j}");
                break j["job_id"].as_str().unwrap().to_string();
            }
        }
        assert!(
            std::time::Instant::now() < until,
            "the CLI job never showed progress: {jobs}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Its events come from the journal: the job, the phases so far, progress samples.
    let follower = serve_support::follow(
        svc.url(&format!("/api/v1/jobs/{id}/events")),
        Duration::from_secs(120),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let (s, v) = svc.post(&format!("/api/v1/jobs/{id}/cancel"), &json!({}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["job_id"], id.as_str(), "{v}");
    assert_eq!(v["status"], "cancelled", "{v}");
    assert_eq!(v["partial_state"], "removed", "{v}");
    let code = child.wait().unwrap().code();
    assert_ne!(code, Some(0));
    let stream = follower.join().unwrap();
    assert!(stream.contains("event: job"), "{stream}");
    assert!(
        stream.contains("\"phase\":\"copy\",\"state\":\"started\""),
        "{stream}"
    );
    assert!(stream.contains("event: progress"), "{stream}");
    assert!(
        stream.contains("\"status\":\"cancelled\""),
        "the report ends it: {stream}"
    );
    let job = svc.wait_job(&id, 10, |v| v["status"] != "running");
    assert_eq!(job["status"], "cancelled", "{job}");
    assert_eq!(
        common::listing(&dst),
        Vec::<String>::new(),
        "no partial target left"
    );
    // Cancelling it again is a conflict, said in one line.
    let (s, v) = svc.post(&format!("/api/v1/jobs/{id}/cancel"), &json!({}));
    assert_eq!(s, 409, "{v}");
}

#[test]
fn a_job_started_over_http_outlives_a_restart_and_resumes_from_its_checkpoint() {
    let ws = Ws::new();
    let svc = Service::start(ws.dir.path());
    let img = image(&svc, "vm.qcow2", 512, 192);
    let dst = svc.store.join("moved");
    std::fs::create_dir_all(&dst).unwrap();
    let mut req = offline(&img, &dst);
    req["bwlimit"] = json!(24 * M);
    let (s, v) = svc.post("/api/v1/jobs", &req);
    assert_eq!(s, 201, "{v}");
    let id = v["job_id"].as_str().unwrap().to_string();
    svc.wait_job(&id, 60, |v| {
        v["progress"]["done_bytes"].as_u64().unwrap_or(0) >= 64 * M
    });
    // SIGTERM: the service interrupts the job at a checkpoint (as Ctrl-C does the CLI's:
    // its partial target kept for a resume) and exits.
    let (code, log) = svc.terminate();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("interrupting running jobs"), "{log}");

    let svc = Service::start(ws.dir.path());
    let job = svc.wait_job(&id, 10, |_| true);
    assert_eq!(job["status"], "interrupted", "{job}");
    assert_eq!(job["partial_state"], "kept", "{job}");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("stopped at a chunk boundary by Ctrl-C or SIGTERM"),
        "{job}"
    );
    let done_before = job["progress"]["done_bytes"].as_u64().unwrap();
    assert!(done_before >= 64 * M, "{job}");
    // Resume without the limit: it continues, does not start over.
    let (s, v) = svc.post(&format!("/api/v1/jobs/{id}/resume"), &json!({"bwlimit": 0}));
    assert_eq!(s, 202, "{v}");
    let job = svc.wait_job(&id, 120, |v| v["status"] == "succeeded");
    let report = &job["report"];
    assert_eq!(report["verification"]["result"], "match", "{report}");
    assert!(
        report["bytes_reused"].as_u64().unwrap() >= 64 * M,
        "{report}"
    );
    assert_eq!(job["runs"], 2, "{job}");
    common::assert_same_image(&img, &dst.join("vm.qcow2"));

    // A restart after a crash (SIGKILL) shows a job the service ran as interrupted too.
    let mut req = offline(&img, &svc.store.join("again"));
    std::fs::create_dir_all(svc.store.join("again")).unwrap();
    req["bwlimit"] = json!(8 * M);
    let (_, v) = svc.post("/api/v1/jobs", &req);
    let id2 = v["job_id"].as_str().unwrap().to_string();
    svc.wait_job(&id2, 60, |v| v["status"] == "running");
    svc.kill();
    let svc = Service::start(ws.dir.path());
    let job = svc.wait_job(&id2, 10, |_| true);
    assert_eq!(job["status"], "interrupted", "{job}");
    let (s, v) = svc.post(&format!("/api/v1/jobs/{id2}/cancel"), &json!({}));
    assert_eq!(s, 200, "{v}");
}

#[test]
fn bandwidth_changes_and_rollback_go_through_the_api() {
    let ws = Ws::new();
    let svc = Service::start(ws.dir.path());
    let img = image(&svc, "r.qcow2", 256, 96);
    let dst = svc.store.join("r");
    std::fs::create_dir_all(&dst).unwrap();
    let mut req = offline(&img, &dst);
    req["bwlimit"] = json!(8 * M);
    let (_, v) = svc.post("/api/v1/jobs", &req);
    let id = v["job_id"].as_str().unwrap().to_string();
    svc.wait_job(&id, 60, |v| v["now"]["phase"] == "copy");
    // A read token cannot change it; an operate token can.
    let (s, _, _) = svc.call(
        "PATCH",
        &format!("/api/v1/jobs/{id}"),
        Some(READ),
        Some("{\"bwlimit\":0}"),
    );
    assert_eq!(s, 403);
    let (s, _, v) = svc.call(
        "PATCH",
        &format!("/api/v1/jobs/{id}"),
        Some(OPERATE),
        Some("{\"bwlimit\":0}"),
    );
    assert_eq!(s, 200, "{v}");
    let job = svc.wait_job(&id, 120, |v| v["status"] == "succeeded");
    let changes = job["report"]["bwlimit_changes"].as_array().unwrap();
    assert_eq!(changes.last().unwrap()["bytes_per_sec"], 0, "{changes:?}");
    let target = dst.join("r.qcow2");
    assert!(target.exists());

    let (s, v) = svc.post(&format!("/api/v1/jobs/{id}/rollback"), &json!({}));
    assert_eq!(s, 202, "{v}");
    let job = svc.wait_job(&id, 60, |v| v["status"] == "rolled_back");
    assert_eq!(job["status"], "rolled_back");
    assert!(!target.exists(), "rollback deletes the target");
    assert!(img.exists(), "and keeps the source");
    // A second rollback is refused: 409, the refusal in one line.
    let (s, v) = svc.post(&format!("/api/v1/jobs/{id}/rollback"), &json!({}));
    assert_eq!(s, 409, "{v}");
    assert!(
        v["detail"].as_str().unwrap().contains("rollback refused"),
        "{v}"
    );
}

#[test]
fn the_openapi_document_describes_every_path_and_the_request_type() {
    let ws = Ws::new();
    let svc = Service::start(ws.dir.path());
    let (s, _, doc) = svc.call("GET", "/api/v1/openapi.json", None, None);
    assert_eq!(s, 200);
    // Liveness answers without a token at the root and beside the API.
    for path in ["/healthz", "/api/v1/healthz"] {
        let (s, _, v) = svc.call("GET", path, None, None);
        assert_eq!((s, v["status"].as_str()), (200, Some("ok")), "{path}: {v}");
    }
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let mut paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/api/v1/check",
            "/api/v1/datastores",
            "/api/v1/jobs",
            "/api/v1/jobs/{id}",
            "/api/v1/jobs/{id}/cancel",
            "/api/v1/jobs/{id}/events",
            "/api/v1/jobs/{id}/resume",
            "/api/v1/jobs/{id}/rollback",
            "/healthz",
        ]
    );
    let schemas = &doc["components"]["schemas"];
    for name in [
        "JobRequest",
        "OfflineRequest",
        "LiveRequest",
        "DomainRequest",
        "Report",
        "JobEvent",
        "Problem",
    ] {
        assert!(schemas.get(name).is_some(), "{name} missing");
    }
    assert!(schemas["OfflineRequest"]["properties"]
        .get("bwlimit")
        .is_some());
    assert_eq!(
        doc["paths"]["/api/v1/jobs/{id}"]["patch"]["requestBody"]["content"]["application/json"]
            ["schema"]["$ref"],
        "#/components/schemas/JobPatch"
    );
}

#[test]
fn the_service_refuses_to_start_on_unsafe_configuration() {
    let ws = Ws::new();
    let root = ws.dir.path();
    let store = ws.mkdir("store");
    let config = serve_support::write_config(root, &store, "");
    let run = |args: &[&str]| {
        let out = ws.vmshift().arg("serve").args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // A tokens file others can read.
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(root.join("tokens"))
            .unwrap()
            .permissions(),
        0o644,
    );
    std::fs::set_permissions(
        root.join("tokens"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let (code, err) = run(&["--config", p(&config)]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("mode 0644") && err.contains("chmod 600"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    std::fs::set_permissions(
        root.join("tokens"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    // Off loopback without TLS.
    let (code, err) = run(&["--config", p(&config), "--listen", "0.0.0.0:0"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("HTTPS is required"), "{err}");
    // A datastore that does not exist.
    let bad = serve_support::write_config(&ws.mkdir("b"), &root.join("nope"), "");
    let (code, err) = run(&["--config", p(&bad)]);
    assert_ne!(code, Some(0));
    assert!(err.contains("datastore") && err.contains("nope"), "{err}");
    // A key the file format does not have.
    let typo = serve_support::write_config(&ws.mkdir("c"), &store, "datastore = [\"/x\"]\n");
    let (code, err) = run(&["--config", p(&typo)]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("unknown field `datastore`") && err.contains("line 4"),
        "{err}"
    );
}

#[test]
fn https_with_the_configured_certificate() {
    let ws = Ws::new();
    let root = ws.dir.path();
    let store = ws.mkdir("store");
    let (cert, key) = (root.join("cert.pem"), root.join("key.pem"));
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            p(&key),
            "-out",
            p(&cert),
        ])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let config = serve_support::write_config(
        root,
        &store,
        &format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\n", p(&cert), p(&key)),
    );
    // A key others can read is refused, like the tokens file.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = ws
        .vmshift()
        .args(["--config", p(&config), "serve"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TLS key") && err.contains("mode 0644"),
        "{err}"
    );
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let svc = Service::start_with(root, &config, &store);
    assert!(svc.base.starts_with("https://"), "{}", svc.base);
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--cacert",
            p(&cert),
            "-H",
            &format!("Authorization: Bearer {READ}"),
        ])
        .arg(svc.url("/api/v1/datastores"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["path"], p(&store.canonicalize().unwrap()));
    // Plain HTTP to the TLS port gets nothing usable.
    let plain = svc.base.replace("https://", "http://");
    let r = serve_support::agent(Duration::from_secs(10))
        .get(format!("{plain}/healthz"))
        .call();
    assert!(r.is_err(), "{r:?}");
}

#[test]
fn jobs_the_service_runs_notify_the_configured_webhook() {
    let ws = Ws::new();
    let root = ws.dir.path();
    let store = ws.mkdir("store");
    let hook = hook_support::Hook::start(hook_support::Answer::Statuses(&[]));
    let config = serve_support::write_config(
        root,
        &store,
        &format!(
            "[[notify.webhooks]]\nurl = \"{}\"\nevents = [\"job.started\", \"job.succeeded\"]\nsecret = \"service-hook-secret\"\n",
            hook.url
        ),
    );
    let svc = Service::start_with(root, &config, &store);
    let img = image(&svc, "n.qcow2", 64, 8);
    let dst = ws.mkdir("store/n");
    let (s, v) = svc.post("/api/v1/jobs", &offline(&img, &dst));
    assert_eq!(s, 201, "{v}");
    let id = v["job_id"].as_str().unwrap().to_string();
    svc.wait_job(&id, 60, |v| v["status"] == "succeeded");
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while hook.requests().len() < 2 {
        assert!(
            std::time::Instant::now() < until,
            "the hook got {:?}",
            hook.requests()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let got: Vec<Value> = hook.requests().iter().map(|r| r.json()).collect();
    assert_eq!(got[0]["event"], "job.started");
    assert_eq!(got[1]["event"], "job.succeeded");
    assert_eq!(got[1]["job_id"], id.as_str());
    assert_eq!(got[1]["summary"]["bytes_copied"], 8 * M);
    assert!(hook.requests()[1].headers["x-vmshift-signature"].starts_with("sha256="));
    // Each delivery is in the journal and the job's view.
    let job = svc.wait_job(&id, 30, |v| {
        v["deliveries"]
            .as_array()
            .is_some_and(|d| d.len() == 2 && d.iter().all(|x| x["state"] == "delivered"))
    });
    let events: Vec<&str> = job["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["job.started", "job.succeeded"], "{job}");
}

#[test]
fn a_state_directory_inside_a_datastore_keeps_one_journal_for_the_service_and_the_cli() {
    // The datastore walk must not open the journal (that would drop this process's SQLite
    // locks, and the CLI's exit would then delete the WAL the service still writes).
    let ws = Ws::new();
    let root = ws.dir.path();
    let store = ws.mkdir("store");
    let state = store.join("state");
    let config = serve_support::write_config(root, &store, "");
    let svc = Service::start_in(&config, &store, &state);
    let img = image(&svc, "s.qcow2", 64, 16);
    let (b, c) = (ws.mkdir("store/b"), ws.mkdir("store/c"));
    let mut req = offline(&img, &b);
    req["bwlimit"] = json!(4 * M);
    let (_, v) = svc.post("/api/v1/jobs", &req);
    let id = v["job_id"].as_str().unwrap().to_string();
    svc.wait_job(&id, 30, |v| v["status"] == "running");
    let (s, ds) = svc.get("/api/v1/datastores");
    assert_eq!(s, 200, "{ds}");
    // The source and the partial target being written; not the journal.
    assert_eq!(ds[0]["images"], 2, "{ds}");
    let out = ws
        .vmshift()
        .env("VMSHIFT_STATE_DIR", &state)
        .args(["migrate", p(&img), "--to", p(&c), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(svc.deleted_journal_fds(), Vec::<String>::new());
    svc.wait_job(&id, 60, |v| v["status"] == "succeeded");
    let cli_jobs = ws
        .vmshift()
        .env("VMSHIFT_STATE_DIR", &state)
        .args(["jobs", "--json"])
        .output()
        .unwrap();
    let cli_jobs: Value = serde_json::from_slice(&cli_jobs.stdout).unwrap();
    assert_eq!(cli_jobs.as_array().unwrap().len(), 2, "{cli_jobs}");
    let (_, api_jobs) = svc.get("/api/v1/jobs");
    assert_eq!(api_jobs.as_array().unwrap().len(), 2, "{api_jobs}");
    // And the journal's own files are refused as images.
    let (s, v) = svc.post("/api/v1/check", &offline(&state.join("journal.sqlite"), &c));
    assert_eq!(s, 403, "{v}");
    assert!(
        v["detail"].as_str().unwrap().contains("state directory"),
        "{v}"
    );
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_image_whose_backing_file_lies_outside_the_datastores_is_refused() {
    let ws = Ws::new();
    let svc = Service::start(ws.dir.path());
    let outside = ws.mkdir("outside");
    let base = outside.join("secret-base.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&base), "16M"]);
    qemu_io("qcow2", &base, &["write -P 0x5a 0 1M"]);
    let child = svc.store.join("child.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        p(&base),
        "-F",
        "qcow2",
        p(&child),
    ]);
    let dst = svc.store.join("dst");
    std::fs::create_dir_all(&dst).unwrap();
    for path in ["/api/v1/check", "/api/v1/jobs"] {
        let (s, v) = svc.post(path, &offline(&child, &dst));
        assert_eq!(s, 403, "{path}: {v}");
        let d = v["detail"].as_str().unwrap();
        assert!(d.contains("backing file") && d.contains(p(&base)), "{d}");
    }
    assert!(common::listing(&dst).is_empty());
    let (_, jobs) = svc.get("/api/v1/jobs?all=true");
    assert_eq!(jobs, json!([]));
}

/// `to` may name a configured datastore over HTTP too: the runner resolves it before the
/// service checks the paths.
#[test]
fn a_requests_to_may_name_a_datastore_and_an_unknown_name_is_a_400() {
    let ws = Ws::new();
    let root = ws.dir.path();
    let store = root.join("store");
    let fast = root.join("fast");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::create_dir_all(&fast).unwrap();
    let config = serve_support::write_config(root, &store, "");
    let text = std::fs::read_to_string(&config).unwrap();
    let named = format!(
        "datastores = [{{ name = \"store\", root = {:?} }}, {{ name = \"fast\", root = {:?} }}]",
        p(&store),
        p(&fast)
    );
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("datastores") {
                named.as_str()
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&config, text + "\n").unwrap();
    let svc = Service::start_with(root, &config, &store);
    let img = image(&svc, "disk.qcow2", 64, 4);
    let (s, plan) = svc.post(
        "/api/v1/check",
        &json!({"kind": "offline", "source": img, "to": "fast"}),
    );
    assert_eq!(s, 200, "{plan}");
    assert_eq!(plan["go"], true, "{plan}");
    let target = p(&fast.join("disk.qcow2")).to_string();
    assert!(
        plan["lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains(&target)),
        "{plan}"
    );
    let (s, v) = svc.post(
        "/api/v1/jobs",
        &json!({"kind": "offline", "source": img, "to": "nosuch"}),
    );
    assert_eq!(s, 400, "{v}");
    let detail = v["detail"].as_str().unwrap();
    assert!(detail.contains("\"nosuch\""), "{detail}");
    assert!(detail.contains("configured: store, fast"), "{detail}");
}
