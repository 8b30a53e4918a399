//! The files in `packaging/` as they are in the tree (fast; `deb.rs` builds and installs the
//! package): the example config is valid TOML with its examples uncommented, and the
//! systemd unit passes `systemd-analyze verify` with the settings the service relies on.

use std::path::{Path, PathBuf};
use std::process::Command;

fn packaging(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../packaging")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(packaging(name)).unwrap()
}

/// The config with its commented-out examples (`# [table]`, `# key = ...`) uncommented;
/// prose comments stay comments.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if rest.starts_with('[') || is_assignment(rest) => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_assignment(s: &str) -> bool {
    s.split_once(" = ")
        .is_some_and(|(key, _)| key.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
}

#[test]
fn example_config_parses_as_shipped() {
    let t: toml::Table = read("config.toml").parse().unwrap();
    assert_eq!(t["listen"].as_str(), Some("127.0.0.1:8088"));
    assert_eq!(t["tokens"].as_str(), Some("/etc/vmshift/tokens"));
    assert_eq!(
        t["datastores"].as_array().unwrap()[0].as_str(),
        Some("/var/lib/libvirt/images")
    );
    assert!(!t.contains_key("tls") && !t.contains_key("notify"));
    // The service itself accepts it (unknown keys would be refused).
    let c = vmshift_server::config::Config::load(Some(&packaging("config.toml")), None).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8088");
}

#[test]
fn example_config_parses_with_every_example_uncommented() {
    let text = uncommented(&read("config.toml"));
    let t: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("uncommented config is not TOML: {e}\n{text}"));
    assert_eq!(t["tls"]["cert"].as_str(), Some("/etc/vmshift/tls/cert.pem"));
    assert_eq!(t["tls"]["key"].as_str(), Some("/etc/vmshift/tls/key.pem"));
    let notify = t["notify"].as_table().unwrap();
    assert_eq!(
        notify["command"].as_array().unwrap()[0].as_str(),
        Some("/etc/vmshift/notify-mail")
    );
    let hooks = notify["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 1);
    assert_eq!(
        hooks[0]["url"].as_str(),
        Some("https://chat.example.com/hooks/vmshift")
    );
    assert_eq!(hooks[0]["events"].as_array().unwrap().len(), 3);
    assert_eq!(
        hooks[0]["secret_file"].as_str(),
        Some("/etc/vmshift/webhook.secret")
    );
    // The service's loader accepts every uncommented key, and the [notify] table is the
    // notifier's format (only the secret file itself is missing here).
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("config.toml");
    std::fs::write(&f, &text).unwrap();
    let c = vmshift_server::config::Config::load(Some(&f), None).unwrap();
    assert!(c.tls.is_some());
    let e = vmshift_notify::NotifyConfig::from_config_file(&f)
        .unwrap_err()
        .to_string();
    assert!(e.contains("/etc/vmshift/webhook.secret"), "{e}");
    // No example was left commented out in a shape the uncommenting missed.
    for l in text.lines().filter(|l| l.starts_with('#')) {
        assert!(
            !l.contains(" = ") && !l.contains("#["),
            "still commented: {l}"
        );
    }
}

/// `[Section]` → `Key=Value` lines of a unit file (comments dropped).
fn unit_settings(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for l in text.lines().map(str::trim) {
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.to_string();
        } else {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not Key=Value: {l}"));
            out.push((section.clone(), k.to_string(), v.to_string()));
        }
    }
    out
}

#[test]
fn unit_runs_serve_with_the_state_and_config_directories_and_checkpoints_on_stop() {
    let settings = unit_settings(&read("vmshift.service"));
    let get = |key: &str| -> &str {
        let v: Vec<_> = settings.iter().filter(|(_, k, _)| k == key).collect();
        assert_eq!(v.len(), 1, "{key} set {} times", v.len());
        &v[0].2
    };
    assert_eq!(
        get("ExecStart"),
        "/usr/bin/vmshift serve --config /etc/vmshift/config.toml"
    );
    assert_eq!(get("Environment"), "VMSHIFT_STATE_DIR=/var/lib/vmshift");
    assert_eq!(get("StateDirectory"), "vmshift");
    assert_eq!(get("ConfigurationDirectory"), "vmshift");
    assert_eq!(get("Restart"), "on-failure");
    assert_eq!(get("KillSignal"), "SIGTERM");
    assert_eq!(get("TimeoutStopSec"), "5min");
    // Datastores are anywhere: the whole file system must stay writable but /usr, /etc.
    assert_eq!(get("ProtectSystem"), "full");
    assert_eq!(get("ProtectHome"), "read-only");
    for key in ["PrivateDevices", "ProtectProc", "User", "DynamicUser"] {
        assert!(
            settings.iter().all(|(_, k, _)| k != key),
            "{key} would keep the service from its images, devices or QEMU"
        );
    }
    assert!(get("RestrictAddressFamilies").contains("AF_UNIX"));
    assert_eq!(get("WantedBy"), "multi-user.target");
}

#[test]
fn unit_passes_systemd_analyze_verify_without_warnings() {
    // verify checks that ExecStart's binary exists: point it at the one cargo built.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("vmshift.service");
    let text = read("vmshift.service").replace("/usr/bin/vmshift", env!("CARGO_BIN_EXE_vmshift"));
    std::fs::write(&unit, text).unwrap();
    // --man=no: the man pages are checked installed, in deb.rs.
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze ({e}): install systemd (scripts/install-deps.sh)")
        });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    // An unknown key or bad value is only a warning ("..., ignoring"): none allowed.
    assert!(stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
}
