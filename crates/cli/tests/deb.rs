//! The Debian package end to end, as an operator installs it: `scripts/build-deb.sh` (a
//! `dist` build: minutes when cold, and cargo-deb's install the first time), `dpkg -i`, what
//! the package puts where, then `dpkg -r` (the conffile stays, as dpkg keeps conffiles) and
//! `dpkg --purge` (nothing stays). Needs root and no vmshift package installed beforehand.
//! One test: it is the only thing this binary runs, so no other test shares its dpkg.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Runs and requires exit 0; returns stdout.
fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn dpkg_field(field: &str) -> String {
    ok(
        "dpkg-query",
        &["-W", &format!("-f=${{{field}}}"), "vmshift"],
    )
}

/// Purges the package when the test ends, passed or not.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", "vmshift"]);
    }
}

#[test]
fn deb_installs_binary_man_pages_completions_unit_and_conffile_and_removes_cleanly() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the package test installs with dpkg -i: run it as root"
    );
    let status = run("dpkg-query", &["-W", "-f=${Status}", "vmshift"]);
    assert!(
        !status.status.success()
            || String::from_utf8_lossy(&status.stdout).contains("not-installed"),
        "a vmshift package is installed ({}); this test installs and purges its own: \
         dpkg --purge vmshift first",
        String::from_utf8_lossy(&status.stdout)
    );
    assert!(
        !Path::new("/etc/vmshift").exists(),
        "/etc/vmshift exists; this test's purge would remove it: move it away first"
    );

    let t0 = Instant::now();
    let build = Command::new("bash")
        .arg(repo().join("scripts/build-deb.sh"))
        .current_dir(repo())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&build.stderr);
    assert!(build.status.success(), "scripts/build-deb.sh: {stderr}");
    let stdout = String::from_utf8(build.stdout).unwrap();
    let deb = stdout.lines().last().expect("build-deb.sh printed no path");
    assert!(
        deb.ends_with(".deb") && Path::new(deb).is_file(),
        "not a package: {deb}"
    );
    eprintln!("deb: build-deb.sh took {:.0?}", t0.elapsed());

    let _purge = Purge;
    ok("dpkg", &["-i", deb]);

    // The binary: the package's version, stripped.
    let v = ok("/usr/bin/vmshift", &["--version"]);
    assert_eq!(v.trim(), format!("vmshift {VERSION}"));
    assert!(dpkg_field("Version").starts_with(&format!("{VERSION}-")));
    let sections = ok("readelf", &["-S", "-W", "/usr/bin/vmshift"]);
    assert!(
        !sections.contains(".symtab"),
        "/usr/bin/vmshift is not stripped"
    );
    let depends = dpkg_field("Depends");
    for dep in ["libc6", "libvirt0", "qemu-utils"] {
        assert!(depends.contains(dep), "Depends lacks {dep}: {depends}");
    }
    assert!(dpkg_field("Recommends").contains("qemu-system-x86"));
    assert_eq!(dpkg_field("Section"), "admin");

    // Man pages, found the way `man` looks them up.
    let hint = "(a dpkg path-exclude for /usr/share/man in /etc/dpkg/dpkg.cfg.d drops man pages)";
    for page in ["vmshift", "vmshift-migrate", "vmshift-jobs-prune"] {
        let out = run("man", &["-w", page]);
        let path = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "man -w {page}: {} {hint}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(path.trim(), format!("/usr/share/man/man1/{page}.1.gz"));
    }

    // Completions where bash-completion, zsh and fish look for them; bash completes.
    let bash = std::fs::read_to_string("/usr/share/bash-completion/completions/vmshift").unwrap();
    assert!(bash.contains("migrate"));
    let zsh = std::fs::read_to_string("/usr/share/zsh/vendor-completions/_vmshift").unwrap();
    assert!(zsh.starts_with("#compdef vmshift"));
    let fish =
        std::fs::read_to_string("/usr/share/fish/vendor_completions.d/vmshift.fish").unwrap();
    assert!(fish.contains("complete -c vmshift"));
    let completed = ok(
        "bash",
        &[
            "-c",
            "source /usr/share/bash-completion/completions/vmshift; \
             COMP_WORDS=(vmshift mig); COMP_CWORD=1; _vmshift vmshift mig vmshift; \
             printf '%s\\n' \"${COMPREPLY[@]}\"",
        ],
    );
    assert_eq!(completed.trim(), "migrate");

    // The unit and the conffile.
    let files = ok("dpkg", &["-L", "vmshift"]);
    let unit = files
        .lines()
        .find(|l| l.ends_with("/lib/systemd/system/vmshift.service"))
        .unwrap_or_else(|| panic!("dpkg -L lists no unit:\n{files}"));
    assert!(Path::new("/lib/systemd/system/vmshift.service").is_file());
    assert!(files.lines().any(|l| l == "/etc/vmshift/config.toml"));
    assert!(files
        .lines()
        .any(|l| l == "/usr/share/doc/vmshift/README.md"));
    assert!(dpkg_field("Conffiles").contains("/etc/vmshift/config.toml"));
    let config = std::fs::read_to_string("/etc/vmshift/config.toml").unwrap();
    let config: toml::Table = config.parse().unwrap();
    assert!(config.contains_key("listen") && config.contains_key("datastores"));
    let verify = run("systemd-analyze", &["verify", "--man=no", unit]);
    let warnings = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && warnings.trim().is_empty(),
        "systemd-analyze verify {unit}: {warnings}"
    );
    // Every page the unit's Documentation= names is installed, once the subcommand exists
    // (`serve` is written on another branch; its page comes with it).
    let text = std::fs::read_to_string(unit).unwrap();
    let docs = text
        .lines()
        .find_map(|l| l.strip_prefix("Documentation="))
        .unwrap();
    for page in docs
        .split_whitespace()
        .filter_map(|d| d.strip_prefix("man:"))
    {
        let name = page.trim_end_matches("(1)");
        let sub = name.strip_prefix("vmshift-");
        if let Some(sub) = sub {
            if !run("/usr/bin/vmshift", &[sub, "--help"]).status.success() {
                eprintln!("deb: no `vmshift {sub}` yet; not checking man:{page}");
                continue;
            }
        }
        assert!(
            run("man", &["-w", name]).status.success(),
            "no man page {name}"
        );
    }
    // Not enabled on install: the operator writes the config and tokens first.
    assert!(!Path::new("/etc/systemd/system/multi-user.target.wants/vmshift.service").exists());

    // Remove: the program goes, the conffile stays; purge: nothing stays.
    ok("dpkg", &["-r", "vmshift"]);
    assert!(!Path::new("/usr/bin/vmshift").exists());
    assert!(!Path::new("/lib/systemd/system/vmshift.service").exists());
    assert!(Path::new("/etc/vmshift/config.toml").is_file());
    assert!(dpkg_field("Status").contains("config-files"));
    ok("dpkg", &["--purge", "vmshift"]);
    assert!(!Path::new("/etc/vmshift/config.toml").exists());
    assert!(!Path::new("/usr/share/man/man1/vmshift.1.gz").exists());
    assert!(!Path::new("/etc/vmshift").exists());
    // `dpkg -r` masks the unit (as dh_installsystemd's scripts do); the purge unmasks it.
    assert!(std::fs::symlink_metadata("/etc/systemd/system/vmshift.service").is_err());
    eprintln!("deb: the whole test took {:.0?}", t0.elapsed());
}
