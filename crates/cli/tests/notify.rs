//! Notifications from the real `vmshift` binary: webhooks received by a real local HTTP
//! listener (signatures checked with `openssl`), retries, a hook that never answers, the
//! notify command, and a config that does not load.

mod common;
mod hook_support;
use common::*;
use hook_support::{Answer, Hook, Request};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SECRET: &str = "hook-secret-0123";

/// The HMAC-SHA256 of `body` under `secret` as `openssl dgst` computes it.
fn openssl_signature(ws: &Ws, body: &[u8], secret: &str) -> String {
    let f = ws.path("body.json");
    std::fs::write(&f, body).unwrap();
    let out = run("openssl", &["dgst", "-sha256", "-hmac", secret, p(&f)]);
    format!("sha256={}", out.split_whitespace().last().unwrap())
}

fn write_config(ws: &Ws, text: &str) -> PathBuf {
    let c = ws.path("config.toml");
    std::fs::write(&c, text).unwrap();
    c
}

fn webhook_config(ws: &Ws, url: &str, extra: &str) -> PathBuf {
    write_config(
        ws,
        &format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n\n[notify]\n{extra}\n[[notify.webhooks]]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\nname = \"chat\"\n"
        ),
    )
}

fn small_image(ws: &Ws) -> (PathBuf, PathBuf) {
    let src = ws.path("web01.raw");
    std::fs::write(&src, random_bytes(usize::try_from(4 * M).unwrap(), 11)).unwrap();
    (src, ws.mkdir("dst"))
}

/// `vmshift migrate SRC --to DST --json --config CONFIG`: (exit code, report, output, time).
fn migrate_with(
    ws: &Ws,
    config: &Path,
    src: &Path,
    dst: &Path,
) -> (i32, Value, std::process::Output, Duration) {
    let t = Instant::now();
    let out = ws
        .vmshift()
        .args([
            "--config",
            p(config),
            "migrate",
            p(src),
            "--to",
            p(dst),
            "--json",
        ])
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        last_report(&out),
        out,
        t.elapsed(),
    )
}

#[test]
fn a_webhook_gets_started_phases_and_succeeded_in_order_each_signed_and_status_shows_them_delivered(
) {
    let ws = Ws::new();
    let hook = Hook::start(Answer::Statuses(&[]));
    let config = webhook_config(&ws, &hook.url, "");
    let (src, dst) = small_image(&ws);
    let (code, report, out, _) = migrate_with(&ws, &config, &src, &dst);
    assert_eq!(code, 0, "{}", stderr(&out));
    assert_eq!(report["status"], "succeeded");
    let id = report["job_id"].as_str().unwrap();

    let reqs = hook.requests();
    let events: Vec<String> = reqs
        .iter()
        .map(|r| r.json()["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events.first().map(String::as_str), Some("job.started"));
    assert_eq!(events.last().map(String::as_str), Some("job.succeeded"));
    assert!(
        events[1..events.len() - 1].iter().all(|e| e == "job.phase"),
        "{events:?}"
    );
    // Every phase event the job printed, in the same order.
    let printed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "phase")
        .collect();
    let sent: Vec<Value> = reqs[1..reqs.len() - 1]
        .iter()
        .map(|r| r.json()["data"].clone())
        .collect();
    assert_eq!(sent, printed);
    assert!(sent.len() >= 4, "{sent:?}");

    let mut ids = std::collections::HashSet::new();
    for r in &reqs {
        let v = r.json();
        assert_eq!(v["job_id"], id);
        assert_eq!(r.headers["x-vmshift-event"], v["event"].as_str().unwrap());
        assert_eq!(
            r.headers["x-vmshift-signature"],
            openssl_signature(&ws, &r.body, SECRET)
        );
        assert_ne!(
            r.headers["x-vmshift-signature"],
            openssl_signature(&ws, &r.body, "other")
        );
        assert_eq!(r.headers["content-type"], "application/json");
        assert!(
            r.headers["user-agent"].starts_with("vmshift/"),
            "{:?}",
            r.headers
        );
        assert!(ids.insert(r.headers["x-vmshift-delivery"].clone()));
        assert!(chrono::DateTime::parse_from_rfc3339(v["sent_at"].as_str().unwrap()).is_ok());
    }
    assert_eq!(reqs[0].json()["data"]["event"], "job");
    assert!(reqs[0].json()["summary"].is_null());
    let end = reqs.last().unwrap().json();
    assert_eq!(end["data"]["report"]["job_id"], id);
    let s = &end["summary"];
    assert_eq!(s["status"], "succeeded");
    assert_eq!(s["kind"], "offline");
    assert_eq!(s["bytes_copied"], report["bytes_copied"]);
    assert_eq!(s["bytes_copied"], 4 * M);
    assert_eq!(s["verification"], report["verification"]["result"]);
    assert_eq!(s["verification"], "match");
    assert_eq!(s["duration_ms"], report["duration_ms"]);
    assert_eq!(s["source"], report["source"]["path"]);
    assert_eq!(s["destination"], report["destination"]["path"]);
    assert!(s["error"].is_null());

    let st = ws.status(id);
    let d = st["deliveries"].as_array().unwrap();
    assert_eq!(d.len(), reqs.len());
    for x in d {
        assert_eq!(x["target"], "chat");
        assert_eq!(x["state"], "delivered", "{x}");
        assert_eq!(x["attempts"], 1);
        assert_eq!(x["last_status"], 200);
    }
    assert_eq!(d[0]["event"], "job.started");
    assert_eq!(d.last().unwrap()["event"], "job.succeeded");
    let text = ws.vmshift().args(["status", id]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("notify       chat job.succeeded delivered (1 attempt): HTTP 200"),
        "{text}"
    );
}

#[test]
fn a_webhook_answering_500_twice_is_delivered_on_the_third_attempt() {
    let ws = Ws::new();
    let hook = Hook::start(Answer::Statuses(&[500, 500]));
    let config = webhook_config(&ws, &hook.url, "retry_for_secs = 20");
    let (src, dst) = small_image(&ws);
    let (code, report, out, took) = migrate_with(&ws, &config, &src, &dst);
    assert_eq!(code, 0, "{}", stderr(&out));
    assert!(took < Duration::from_secs(30), "{took:?}");
    let reqs = hook.requests();
    // The first notification three times (same delivery, same bytes), then the others.
    let first: Vec<&Request> = reqs.iter().take(3).collect();
    for r in &first {
        assert_eq!(r.json()["event"], "job.started");
        assert_eq!(r.body, reqs[0].body);
        assert_eq!(
            r.headers["x-vmshift-delivery"],
            reqs[0].headers["x-vmshift-delivery"]
        );
    }
    assert_eq!(reqs.last().unwrap().json()["event"], "job.succeeded");
    let st = ws.status(report["job_id"].as_str().unwrap());
    let d = st["deliveries"].as_array().unwrap();
    assert_eq!(d[0]["event"], "job.started");
    assert_eq!(d[0]["state"], "delivered");
    assert_eq!(d[0]["attempts"], 3);
    assert_eq!(d[0]["last_status"], 200);
    assert!(
        d[1..]
            .iter()
            .all(|x| x["state"] == "delivered" && x["attempts"] == 1),
        "{d:?}"
    );
}

#[test]
fn a_webhook_that_never_answers_holds_neither_the_job_nor_the_cli_and_is_recorded_not_delivered() {
    let ws = Ws::new();
    let hook = Hook::start(Answer::Never);
    let config = webhook_config(&ws, &hook.url, "");
    let (src, dst) = small_image(&ws);
    let (code, report, out, took) = migrate_with(&ws, &config, &src, &dst);
    assert_eq!(code, 0, "{}", stderr(&out));
    assert_eq!(report["status"], "succeeded");
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert_eq!(
        std::fs::read(dst.join("web01.raw")).unwrap(),
        std::fs::read(&src).unwrap()
    );
    assert!(!hook.requests().is_empty());
    let err = stderr(&out);
    // One line for the hook and the job, naming the succeeded event among the others.
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("vmshift: warning: notification chat: "))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("1 job.succeeded)") && lines[0].contains(" abandoned: "),
        "{err}"
    );
    let st = ws.status(report["job_id"].as_str().unwrap());
    let d = st["deliveries"].as_array().unwrap();
    assert!(d.iter().any(|x| x["event"] == "job.succeeded"), "{d:?}");
    for x in d {
        assert_eq!(x["state"], "abandoned", "{x}");
        assert!(
            x["last_error"]
                .as_str()
                .unwrap()
                .contains("not delivered within the 10 s"),
            "{x}"
        );
    }
}

#[test]
fn the_notify_command_gets_the_succeeded_json_on_stdin() {
    let ws = Ws::new();
    let script = ws.path("notify.sh");
    std::fs::write(&script, "#!/bin/sh\ncat > \"$1\"\n").unwrap();
    run("chmod", &["755", p(&script)]);
    let got = ws.path("got.json");
    let config = write_config(
        &ws,
        &format!(
            "[notify]\ncommand = [\"{}\", \"{}\"]\n",
            p(&script),
            p(&got)
        ),
    );
    let (src, dst) = small_image(&ws);
    let out = ws
        .vmshift()
        .env("VMSHIFT_CONFIG", &config)
        .args(["migrate", p(&src), "--to", p(&dst), "--json"])
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = last_report(&out);
    // Only the end event by default: the file holds the last (and only) one.
    let v: Value = serde_json::from_slice(&std::fs::read(&got).unwrap()).unwrap();
    assert_eq!(v["event"], "job.succeeded");
    assert_eq!(v["job_id"], report["job_id"]);
    assert_eq!(v["summary"]["status"], "succeeded");
    assert_eq!(v["summary"]["bytes_copied"], report["bytes_copied"]);
    assert_eq!(v["data"]["report"], report);
    let st = ws.status(report["job_id"].as_str().unwrap());
    let d = st["deliveries"].as_array().unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["target"], "command");
    assert_eq!(d[0]["state"], "delivered");
    assert_eq!(d[0]["last_status"], 0);
}

#[test]
fn a_notify_command_still_running_when_the_cli_gives_up_is_killed_not_left_behind() {
    let ws = Ws::new();
    let script = ws.path("slow.sh");
    let pidfile = ws.path("slow.pid");
    std::fs::write(&script, "#!/bin/sh\necho $$ > \"$1\"\nexec sleep 97\n").unwrap();
    run("chmod", &["755", p(&script)]);
    let config = write_config(
        &ws,
        &format!(
            "[notify]\ncommand = [\"{}\", \"{}\"]\n",
            p(&script),
            p(&pidfile)
        ),
    );
    let (src, dst) = small_image(&ws);
    let out = ws
        .vmshift()
        .env("VMSHIFT_CONFIG", &config)
        .args(["migrate", p(&src), "--to", p(&dst)])
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    // Gone (or a zombie about to be reaped by init), not sleeping on.
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        state.is_empty() || state.contains(") Z"),
        "the command still runs: {state}"
    );
}

#[test]
fn a_config_that_does_not_load_stops_migrate_with_exit_2_and_no_job() {
    let ws = Ws::new();
    let (src, dst) = small_image(&ws);
    let bad = write_config(&ws, "[notify]\nretry_for_secs = \"soon\"\n");
    let (code, _, out, _) = migrate_with(&ws, &bad, &src, &dst);
    assert_eq!(code, 2);
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(p(&bad)) && err.contains("line 2, column 18"),
        "{err}"
    );
    let bad_event = write_config(
        &ws,
        "[[notify.webhooks]]\nurl = \"http://127.0.0.1:1/\"\nsecret = \"s\"\nevents = [\"job.done\"]\n",
    );
    let (code, _, out, _) = migrate_with(&ws, &bad_event, &src, &dst);
    assert_eq!(code, 2);
    assert!(stderr(&out).contains("job.cancelled"), "{}", stderr(&out));
    let jobs = ws
        .vmshift()
        .args(["jobs", "--all", "--json"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&jobs.stdout).trim(), "[]");
    assert!(!dst.join("web01.raw").exists());
    // Commands that run no job do not read it.
    let listed = ws
        .vmshift()
        .args(["--config", p(&bad), "jobs"])
        .output()
        .unwrap();
    assert!(listed.status.success(), "{}", stderr(&listed));
}
