//! The `[notify]` table of the vmshift config file (TOML). Other tables and keys of the
//! file belong to other parts of vmshift (the service) and are ignored here.
//!
//! ```toml
//! [notify]
//! command = ["/usr/local/bin/vmshift-mail"]        # optional argv, no shell; JSON on stdin
//! command_events = ["job.succeeded", "job.failed"] # default: the three end events
//! retry_for_secs = 300                             # default 300
//! [[notify.webhooks]]
//! url = "https://chat.example.com/hooks/vmshift"
//! events = ["job.succeeded", "job.failed", "job.cancelled"]  # default: all five
//! secret_file = "/etc/vmshift/webhook.secret"      # or secret = "…"
//! name = "chat"                                    # default: the URL's host
//! ```

use crate::error::NotifyError;
use crate::event::EventKind;
use crate::Result;
use serde::Deserialize;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// How long a delivery is retried by default, s.
pub const DEFAULT_RETRY_FOR_SECS: u64 = 300;

/// The target name of the notify command in the journal and `vmshift status`.
pub const COMMAND_TARGET: &str = "command";

/// What to notify, and where. `Default` is nothing configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// A program and its arguments (argv, no shell) run for each notification, with the
    /// body JSON on its standard input; exit status 0 is delivered. It is killed after
    /// 30 s. `VMSHIFT_EVENT`, `VMSHIFT_JOB_ID` and `VMSHIFT_DELIVERY` are set in its
    /// environment.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// The events the command gets (default: `job.succeeded`, `job.failed`,
    /// `job.cancelled`).
    #[serde(default = "end_events")]
    pub command_events: Vec<EventKind>,
    /// How long a failing delivery is retried, s, counted from when it was queued
    /// (default 300; 0: one attempt).
    #[serde(default = "default_retry_for_secs")]
    pub retry_for_secs: u64,
    /// The webhooks.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
}

/// One webhook: a URL that gets an HTTP POST of the body for each of its events.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL.
    pub url: String,
    /// The events it gets (default: all five).
    #[serde(default = "all_events")]
    pub events: Vec<EventKind>,
    /// The secret the body is signed with (`X-Vmshift-Signature`). One of `secret` and
    /// `secret_file` is required; after loading, `secret` holds the file's content.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// A file holding the secret (surrounding white space ignored), readable by its owner
    /// only (mode 0600 or 0400). A relative path is relative to the config file.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// The name shown in the journal and `vmshift status` (default: the URL's host).
    #[serde(default)]
    pub name: Option<String>,
}

/// A webhook secret; `Debug` does not show it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

fn end_events() -> Vec<EventKind> {
    EventKind::ENDS.to_vec()
}

fn all_events() -> Vec<EventKind> {
    EventKind::ALL.to_vec()
}

fn default_retry_for_secs() -> u64 {
    DEFAULT_RETRY_FOR_SECS
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            command: None,
            command_events: end_events(),
            retry_for_secs: DEFAULT_RETRY_FOR_SECS,
            webhooks: Vec::new(),
        }
    }
}

/// The config file as far as notifications care: its `notify` table.
#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    notify: NotifyConfig,
}

impl NotifyConfig {
    /// Reads the config file at `path` and takes its `[notify]` table (absent: nothing
    /// configured), with every webhook's secret loaded and its name set.
    ///
    /// # Errors
    /// [`NotifyError::Read`] when the file cannot be read; [`NotifyError::Config`] for
    /// invalid TOML (with its line and column), an unknown key or event name (the valid
    /// ones listed), a webhook with both or neither of `secret` and `secret_file`, a
    /// secret file that group or others can access, a URL that is not http(s), an empty
    /// command, or two webhooks with the same name.
    pub fn from_config_file(path: &Path) -> Result<NotifyConfig> {
        let text = std::fs::read_to_string(path).map_err(|source| NotifyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        NotifyConfig::from_toml_str(&text, path)
    }

    /// [`NotifyConfig::from_config_file`] for a file's content `text`; `path` names it in
    /// errors and anchors a relative `secret_file`.
    ///
    /// # Errors
    /// As [`NotifyConfig::from_config_file`], but never [`NotifyError::Read`] for the file
    /// itself.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<NotifyConfig> {
        let bad = |message: String| NotifyError::Config {
            path: path.to_path_buf(),
            message,
        };
        let file: ConfigFile = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let (line, col) = line_col(text, s.start);
                    format!("line {line}, column {col}: ")
                })
                .unwrap_or_default();
            let msg = e.message().trim().replace('\n', " ");
            // serde's "unknown variant" already lists them; say they are event names.
            let names = if msg.contains("unknown variant") {
                format!(
                    " (event names: {})",
                    EventKind::ALL.map(EventKind::as_str).join(", ")
                )
            } else {
                String::new()
            };
            bad(format!("{at}{msg}{names}"))
        })?;
        let mut c = file.notify;
        c.validate(path).map_err(bad)?;
        Ok(c)
    }

    /// Whether nothing is configured (no command, no webhook).
    pub fn is_empty(&self) -> bool {
        self.command.is_none() && self.webhooks.is_empty()
    }

    fn validate(&mut self, path: &Path) -> std::result::Result<(), String> {
        if let Some(argv) = &self.command {
            if argv.first().is_none_or(|p| p.trim().is_empty()) {
                return Err(
                    "notify.command is empty: give the program and its arguments, e.g. [\"/usr/local/bin/vmshift-mail\"]"
                        .into(),
                );
            }
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut names: Vec<String> = Vec::new();
        for h in &mut self.webhooks {
            let host = url_host(&h.url).ok_or_else(|| {
                format!(
                    "webhook {:?}: not an http:// or https:// URL with a host",
                    h.url
                )
            })?;
            let name = h.name.clone().unwrap_or(host);
            let label = format!("webhook {name}");
            if name.trim().is_empty() || name == COMMAND_TARGET {
                return Err(format!(
                    "{label}: the name {name:?} is reserved or empty: choose another `name`"
                ));
            }
            if names.contains(&name) {
                return Err(format!(
                    "{label}: two webhooks have this name: give each a distinct `name`"
                ));
            }
            names.push(name.clone());
            h.name = Some(name);
            let secret = match (&h.secret, &h.secret_file) {
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "{label}: give secret or secret_file, not both"
                    ))
                }
                (None, None) => {
                    return Err(format!(
                        "{label}: no secret: set secret_file = \"/etc/vmshift/webhook.secret\" (mode 0600) or secret = \"…\""
                    ))
                }
                (Some(s), None) => s.0.clone(),
                (None, Some(f)) => read_secret(&base.join(f)).map_err(|e| format!("{label}: {e}"))?,
            };
            if secret.trim().is_empty() {
                return Err(format!("{label}: the secret is empty"));
            }
            h.secret = Some(Secret(secret));
        }
        Ok(())
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The host of an `http://` or `https://` URL, `None` for anything else.
pub(crate) fn url_host(url: &str) -> Option<String> {
    let uri: ureq::http::Uri = url.parse().ok()?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return None;
    }
    uri.host()
        .filter(|h| !h.is_empty())
        .map(|h| h.trim_matches(['[', ']']).to_string())
}

/// Reads a secret file that only its owner can access.
fn read_secret(path: &Path) -> std::result::Result<String, String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("cannot read the secret file {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "the secret file {} can be accessed by group or others (mode {mode:04o}): chmod 600 {}",
            path.display(),
            path.display()
        ));
    }
    let s = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the secret file {}: {e}", path.display()))?;
    Ok(s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> std::result::Result<NotifyConfig, String> {
        NotifyConfig::from_toml_str(text, Path::new("/etc/vmshift/config.toml"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_file_without_notify_is_nothing_configured_and_other_tables_are_ignored() {
        let c = load("[server]\nlisten = \"0.0.0.0:8080\"\n[server.tls]\ncert = \"x\"\n").unwrap();
        assert!(c.is_empty());
        assert_eq!(c, NotifyConfig::default());
        assert_eq!(c.retry_for_secs, 300);
        assert_eq!(c.command_events, EventKind::ENDS.to_vec());
    }

    #[test]
    fn a_full_notify_table_loads_with_defaults_filled_in() {
        let c = load(
            r#"
[notify]
command = ["/usr/sbin/sendmail", "-t"]
retry_for_secs = 20
[[notify.webhooks]]
url = "https://chat.example.com:8443/hooks/vmshift"
events = ["job.succeeded", "job.failed"]
secret = "abc"
[[notify.webhooks]]
url = "http://[::1]:9000/x"
secret = "def"
name = "local"
"#,
        )
        .unwrap();
        assert_eq!(
            c.command.as_deref(),
            Some(&["/usr/sbin/sendmail".to_string(), "-t".to_string()][..])
        );
        assert_eq!(c.command_events, EventKind::ENDS.to_vec());
        assert_eq!(c.retry_for_secs, 20);
        assert_eq!(c.webhooks[0].name.as_deref(), Some("chat.example.com"));
        assert_eq!(
            c.webhooks[0].events,
            vec![EventKind::Succeeded, EventKind::Failed]
        );
        assert_eq!(c.webhooks[1].name.as_deref(), Some("local"));
        assert_eq!(c.webhooks[1].events, EventKind::ALL.to_vec());
        assert_eq!(c.webhooks[1].secret, Some(Secret("def".into())));
        assert!(!format!("{c:?}").contains("def"));
    }

    #[test]
    fn an_unknown_event_is_refused_with_its_position_and_the_valid_names() {
        let e = load(
            "[notify]\n[[notify.webhooks]]\nurl = \"https://h/x\"\nsecret = \"s\"\nevents = [\"job.done\"]\n",
        )
        .unwrap_err();
        assert!(
            e.starts_with("config file /etc/vmshift/config.toml: line 5"),
            "{e}"
        );
        assert!(e.contains("job.done"), "{e}");
        for k in EventKind::ALL {
            assert!(e.contains(k.as_str()), "{e}");
        }
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn invalid_toml_and_unknown_keys_are_one_line_with_a_position() {
        let e = load("[notify]\nretry_for_secs = \n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        assert!(!e.contains("event names"), "{e}");
        let e = load("[notify]\nretry_secs = 3\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("retry_secs"), "{e}");
    }

    #[test]
    fn a_webhook_needs_exactly_one_of_secret_and_secret_file() {
        let both = load("[[notify.webhooks]]\nurl = \"https://h.example/x\"\nsecret = \"s\"\nsecret_file = \"/x\"\n")
            .unwrap_err();
        assert!(
            both.contains("webhook h.example: give secret or secret_file, not both"),
            "{both}"
        );
        let neither = load("[[notify.webhooks]]\nurl = \"https://h.example/x\"\n").unwrap_err();
        assert!(
            neither.contains("webhook h.example: no secret"),
            "{neither}"
        );
        let empty = load("[[notify.webhooks]]\nurl = \"https://h.example/x\"\nsecret = \" \"\n")
            .unwrap_err();
        assert!(empty.contains("the secret is empty"), "{empty}");
    }

    #[test]
    fn a_secret_file_others_can_read_is_refused_and_a_0600_one_is_read_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("hook.secret");
        std::fs::write(&f, "top-secret\n").unwrap();
        let cfg = dir.path().join("config.toml");
        let text =
            "[[notify.webhooks]]\nurl = \"https://h.example/x\"\nsecret_file = \"hook.secret\"\n";
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = NotifyConfig::from_toml_str(text, &cfg)
            .unwrap_err()
            .to_string();
        assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
        assert!(e.contains(&f.display().to_string()), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = NotifyConfig::from_toml_str(text, &cfg).unwrap();
        assert_eq!(c.webhooks[0].secret, Some(Secret("top-secret".into())));
        let missing =
            NotifyConfig::from_toml_str(&text.replace("hook.secret", "missing.secret"), &cfg)
                .unwrap_err()
                .to_string();
        assert!(missing.contains("cannot read the secret file"), "{missing}");
    }

    #[test]
    fn urls_commands_and_names_are_checked() {
        let e = load("[[notify.webhooks]]\nurl = \"ftp://h/x\"\nsecret = \"s\"\n").unwrap_err();
        assert!(e.contains("not an http:// or https:// URL"), "{e}");
        let e = load("[notify]\ncommand = []\n").unwrap_err();
        assert!(e.contains("notify.command is empty"), "{e}");
        let e = load(
            "[[notify.webhooks]]\nurl = \"https://h/a\"\nsecret = \"s\"\n[[notify.webhooks]]\nurl = \"https://h/b\"\nsecret = \"s\"\n",
        )
        .unwrap_err();
        assert!(e.contains("webhook h: two webhooks have this name"), "{e}");
    }

    #[test]
    fn line_and_column_count_characters() {
        assert_eq!(line_col("ab\ncdé f", 8), (2, 5));
        assert_eq!(line_col("x", 99), (1, 2));
    }
}
