//! `vmshift completions` and `vmshift man`: shell completion scripts and man pages generated
//! from the clap definitions in `cli.rs`, so they always match the parser. The packaging
//! (`scripts/build-deb.sh`) runs both on the built binary.

use crate::cli::Cli;
use anyhow::Context;
use clap::CommandFactory;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Shells `vmshift completions` writes a script for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompletionShell {
    /// bash (bash-completion).
    Bash,
    /// zsh (a `_vmshift` function for `fpath`).
    Zsh,
    /// fish.
    Fish,
}

impl From<CompletionShell> for clap_complete::Shell {
    fn from(s: CompletionShell) -> Self {
        match s {
            CompletionShell::Bash => clap_complete::Shell::Bash,
            CompletionShell::Zsh => clap_complete::Shell::Zsh,
            CompletionShell::Fish => clap_complete::Shell::Fish,
        }
    }
}

/// Writes the completion script for `shell` to `out`.
///
/// # Errors
/// Writing to `out` fails.
pub fn write_completions(shell: CompletionShell, out: &mut dyn Write) -> std::io::Result<()> {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(
        clap_complete::Shell::from(shell),
        &mut cmd,
        "vmshift",
        &mut buf,
    );
    out.write_all(&buf)?;
    out.flush()
}

/// `vmshift completions SHELL`: the script on stdout. Exit 0.
pub fn completions(shell: CompletionShell) -> anyhow::Result<i32> {
    write_completions(shell, &mut std::io::stdout().lock())
        .context("cannot write the completion script to stdout")?;
    Ok(0)
}

/// Extra sections of `vmshift.1` that clap does not describe.
const MAIN_PAGE_EXTRA: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
The job succeeded (or the command did what it was asked).
.TP
\fB1\fR
The job failed after starting: the source is intact and no target stands under its final name.
.TP
\fB2\fR
Refused by the check, or bad usage.
.SH ENVIRONMENT
.TP
\fBVMSHIFT_STATE_DIR\fR
The state directory (journal, reports). Default: /var/lib/vmshift for root, else
$XDG_STATE_HOME/vmshift or ~/.local/state/vmshift.
.TP
\fBVMSHIFT_LOG\fR
Log filter for diagnostics on stderr, e.g. \fBdebug\fR or \fBvmshift_runner=trace\fR.
"#;

/// Writes `vmshift.1` and one page per subcommand (`vmshift-migrate.1`,
/// `vmshift-jobs-prune.1`, ...) into `dir`, creating it. Returns the files written, the main
/// page first. Existing pages of the same names are replaced.
///
/// # Errors
/// `dir` cannot be created or a page cannot be written; the message names the path.
pub fn write_man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the man page directory {}", dir.display()))?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Builds the whole tree: subcommands get their display names (`vmshift-migrate`).
    cmd.build();
    let source = format!("vmshift {}", env!("CARGO_PKG_VERSION"));
    let mut written = Vec::new();
    write_page(&cmd, dir, &source, MAIN_PAGE_EXTRA, &mut written)?;
    Ok(written)
}

fn write_page(
    cmd: &clap::Command,
    dir: &Path,
    source: &str,
    extra: &str,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone())
        .source(source)
        .manual("vmshift manual");
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)
        .with_context(|| format!("cannot render the man page {}", path.display()))?;
    page.extend_from_slice(extra.as_bytes());
    std::fs::write(&path, &page).with_context(|| {
        format!(
            "cannot write the man page {} (is the directory writable?)",
            path.display()
        )
    })?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(sub, dir, source, "", written)?;
    }
    Ok(())
}

/// `vmshift man --dir DIR`: writes the pages and names each on stdout. Exit 0.
pub fn man(dir: &Path) -> anyhow::Result<i32> {
    for path in write_man_pages(dir)? {
        println!("{}", path.display());
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(shell: CompletionShell) -> String {
        let mut out = Vec::new();
        write_completions(shell, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn completions_name_every_subcommand_in_each_shell() {
        for shell in [
            CompletionShell::Bash,
            CompletionShell::Zsh,
            CompletionShell::Fish,
        ] {
            let s = script(shell);
            for sub in [
                "info",
                "check",
                "migrate",
                "resume",
                "cancel",
                "rollback",
                "completions",
                "man",
            ] {
                assert!(s.contains(sub), "{shell:?} completions lack {sub}");
            }
        }
    }

    #[test]
    fn bash_completions_define_the_vmshift_function() {
        let s = script(CompletionShell::Bash);
        assert!(s.contains("_vmshift()"), "{s}");
        assert!(s.contains("complete -F _vmshift"), "{s}");
        assert!(s.contains("--bwlimit"));
    }

    #[test]
    fn zsh_completions_start_with_compdef() {
        assert!(script(CompletionShell::Zsh).starts_with("#compdef vmshift"));
    }

    #[test]
    fn man_writes_a_page_per_subcommand_with_a_title_line() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("man1");
        let written = write_man_pages(&out).unwrap();
        assert_eq!(written[0], out.join("vmshift.1"));
        for name in [
            "vmshift.1",
            "vmshift-migrate.1",
            "vmshift-check.1",
            "vmshift-jobs.1",
            "vmshift-jobs-prune.1",
            "vmshift-completions.1",
            "vmshift-man.1",
        ] {
            let page = std::fs::read_to_string(out.join(name)).unwrap();
            let title = page.lines().find(|l| l.starts_with(".TH ")).unwrap();
            let stem = name.trim_end_matches(".1");
            assert!(
                title.starts_with(&format!(".TH {stem} 1 ")),
                "{name}: {title}"
            );
            assert!(title.contains(env!("CARGO_PKG_VERSION")), "{name}: {title}");
        }
        assert!(!out.join("vmshift-help.1").exists());
    }

    #[test]
    fn man_pages_carry_about_long_about_and_exit_status() {
        let dir = tempfile::tempdir().unwrap();
        write_man_pages(dir.path()).unwrap();
        let main = std::fs::read_to_string(dir.path().join("vmshift.1")).unwrap();
        assert!(main.contains("prove nothing was lost"));
        assert!(main.contains("vmshift\\-migrate(1)"), "{main}");
        assert!(main.contains(".SH \"EXIT STATUS\""));
        let check = std::fs::read_to_string(dir.path().join("vmshift-check.1")).unwrap();
        assert!(check.contains("Pre\\-flight only"), "{check}");
        assert!(check.contains("\\-\\-to"), "{check}");
        // The doc comment's second paragraph is only in the long about (DESCRIPTION).
        let comp = std::fs::read_to_string(dir.path().join("vmshift-completions.1")).unwrap();
        assert!(
            comp.contains("The Debian package installs all three"),
            "{comp}"
        );
    }

    #[test]
    fn man_into_an_unwritable_place_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = write_man_pages(&file.join("man1")).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("not-a-dir/man1"), "{msg}");
    }
}
