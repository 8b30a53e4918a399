//! One delivery attempt: an HTTP POST of the body to a webhook, or the notify command run
//! with the body on its standard input. Blocking, bounded in time: a webhook gets 5 s to
//! connect and 10 s for the whole request; the command 30 s, then it is killed.

use crate::body::signature;
use crate::event::EventKind;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Time to connect to a webhook, s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for a whole webhook request (connect, send, response), s.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the notify command may run before it is killed, s.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Pids of notify commands running now, so that a notifier that gives up on them (its
/// front end exits) does not leave them behind.
static RUNNING: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Kills every notify command still running (SIGKILL); how many there were.
pub fn kill_running_commands() -> usize {
    let pids = std::mem::take(&mut *RUNNING.lock().unwrap_or_else(|e| e.into_inner()));
    for pid in &pids {
        if let Some(p) = i32::try_from(*pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
    pids.len()
}

/// Where a notification goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// A webhook.
    Webhook {
        /// Its name (journal, status).
        name: String,
        /// Its URL.
        url: String,
        /// Its secret's bytes.
        secret: Vec<u8>,
    },
    /// The notify command.
    Command {
        /// Program and arguments.
        argv: Vec<String>,
    },
}

impl Target {
    /// The name in the journal: the hook's name, or `command`.
    pub fn name(&self) -> &str {
        match self {
            Target::Webhook { name, .. } => name,
            Target::Command { .. } => crate::config::COMMAND_TARGET,
        }
    }
}

/// What one notification is: enough to attempt it again.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// Delivery id (`X-Vmshift-Delivery`).
    pub id: &'a str,
    /// The job.
    pub job_id: &'a str,
    /// The event.
    pub event: EventKind,
    /// The body bytes.
    pub body: &'a [u8],
}

/// How an attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult {
    /// Delivered (a 2xx answer, exit status 0).
    pub delivered: bool,
    /// The HTTP status or the command's exit status, when there was one.
    pub status: Option<i64>,
    /// What went wrong, one line.
    pub error: Option<String>,
}

impl AttemptResult {
    fn failed(status: Option<i64>, error: String) -> Self {
        AttemptResult {
            delivered: false,
            status,
            error: Some(one_line(&error)),
        }
    }
}

/// An HTTP client with vmshift's timeouts, shared by all webhook attempts (it keeps
/// connections). Redirects are not followed (a 3xx is not delivered); proxies come from
/// the usual environment variables (`https_proxy`, `no_proxy`).
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(REQUEST_TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

/// Makes one attempt of `a` at `target`.
pub fn attempt(agent: &ureq::Agent, target: &Target, a: Attempt<'_>) -> AttemptResult {
    match target {
        Target::Webhook { url, secret, .. } => post(agent, url, secret, a),
        Target::Command { argv } => run_command(argv, a),
    }
}

fn post(agent: &ureq::Agent, url: &str, secret: &[u8], a: Attempt<'_>) -> AttemptResult {
    let sent = agent
        .post(url)
        .header("Content-Type", "application/json")
        .header("User-Agent", concat!("vmshift/", env!("CARGO_PKG_VERSION")))
        .header("X-Vmshift-Event", a.event.as_str())
        .header("X-Vmshift-Delivery", a.id)
        .header("X-Vmshift-Signature", signature(secret, a.body))
        .send(a.body);
    match sent {
        Ok(mut resp) => {
            let status = resp.status();
            // Read (a little of) the answer so the connection can be kept.
            let _ = resp.body_mut().with_config().limit(64 * 1024).read_to_vec();
            let code = i64::from(status.as_u16());
            if status.is_success() {
                AttemptResult {
                    delivered: true,
                    status: Some(code),
                    error: None,
                }
            } else {
                AttemptResult::failed(
                    Some(code),
                    format!(
                        "HTTP {} {}",
                        status.as_u16(),
                        status.canonical_reason().unwrap_or("")
                    )
                    .trim_end()
                    .to_string(),
                )
            }
        }
        Err(ureq::Error::Timeout(t)) => {
            AttemptResult::failed(None, format!("no answer in time ({t})"))
        }
        Err(e) => AttemptResult::failed(None, e.to_string()),
    }
}

fn run_command(argv: &[String], a: Attempt<'_>) -> AttemptResult {
    let Some((program, args)) = argv.split_first() else {
        return AttemptResult::failed(None, "notify.command is empty".into());
    };
    let spawned = Command::new(program)
        .args(args)
        .env("VMSHIFT_EVENT", a.event.as_str())
        .env("VMSHIFT_JOB_ID", a.job_id)
        .env("VMSHIFT_DELIVERY", a.id)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            return AttemptResult::failed(
                None,
                format!("cannot run {}: {e}", PathBuf::from(program).display()),
            )
        }
    };
    let pid = child.id();
    RUNNING.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
    // Feed stdin and drain stderr on their own threads: a command that reads neither must
    // not block the delivery thread past the timeout.
    let writer = child.stdin.take().map(|mut stdin| {
        let body = a.body.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&body);
        })
    });
    let reader = child.stderr.take().map(|mut stderr| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.by_ref().take(64 * 1024).read_to_end(&mut buf);
            // Keep draining so the command never blocks on a full pipe.
            let _ = std::io::copy(&mut stderr, &mut std::io::sink());
            String::from_utf8_lossy(&buf).into_owned()
        })
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Ok(s),
            Ok(None) if start.elapsed() >= COMMAND_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!(
                    "{program} still running after {} s: killed",
                    COMMAND_TIMEOUT.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break Err(format!("cannot wait for {program}: {e}")),
        }
    };
    RUNNING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| *p != pid);
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stderr = reader.and_then(|r| r.join().ok()).unwrap_or_default();
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(str::trim)
        .unwrap_or("");
    match status {
        Ok(s) if s.success() => AttemptResult {
            delivered: true,
            status: Some(0),
            error: None,
        },
        Ok(s) => {
            let why = match s.code() {
                Some(c) => format!("{program} exited with status {c}"),
                None => format!("{program} was killed by a signal"),
            };
            AttemptResult::failed(
                s.code().map(i64::from),
                if last.is_empty() {
                    why
                } else {
                    format!("{why}: {last}")
                },
            )
        }
        Err(e) => AttemptResult::failed(None, e),
    }
}

/// `s` on one line, at most 300 characters.
fn one_line(s: &str) -> String {
    let line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > 300 {
        format!("{}…", line.chars().take(300).collect::<String>())
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt_of(body: &[u8]) -> Attempt<'_> {
        Attempt {
            id: "d1",
            job_id: "j1",
            event: EventKind::Succeeded,
            body,
        }
    }

    #[test]
    fn the_command_gets_the_body_on_stdin_and_its_environment_without_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = format!(
            "cat > '{}'; echo \"$VMSHIFT_EVENT $VMSHIFT_JOB_ID $VMSHIFT_DELIVERY\" >> '{}'",
            out.display(),
            out.display()
        );
        let t = Target::Command {
            argv: vec!["/bin/sh".into(), "-c".into(), script],
        };
        let r = attempt(&agent(), &t, attempt_of(b"{\"x\":1}"));
        assert_eq!(
            r,
            AttemptResult {
                delivered: true,
                status: Some(0),
                error: None
            }
        );
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "{\"x\":1}job.succeeded j1 d1\n"
        );
        // argv, not a shell line: the program is the whole first element.
        let t = Target::Command {
            argv: vec!["/bin/true --not-a-shell".into()],
        };
        let r = attempt(&agent(), &t, attempt_of(b"{}"));
        assert!(!r.delivered);
        assert!(r
            .error
            .unwrap()
            .starts_with("cannot run /bin/true --not-a-shell"));
    }

    #[test]
    fn a_failing_command_reports_its_status_and_last_stderr_line() {
        let t = Target::Command {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo first >&2; echo 'no recipients' >&2; exit 3".into(),
            ],
        };
        let r = attempt(&agent(), &t, attempt_of(b"{}"));
        assert_eq!(r.status, Some(3));
        assert_eq!(
            r.error.as_deref(),
            Some("/bin/sh exited with status 3: no recipients")
        );
    }

    #[test]
    fn a_refused_connection_is_a_failed_attempt_without_status() {
        // A port nobody listens on: bind, learn it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let t = Target::Webhook {
            name: "x".into(),
            url: format!("http://127.0.0.1:{port}/hook"),
            secret: b"s".to_vec(),
        };
        let r = attempt(&agent(), &t, attempt_of(b"{}"));
        assert!(!r.delivered);
        assert_eq!(r.status, None);
        assert!(r.error.is_some());
    }

    #[test]
    fn errors_are_one_line_and_bounded() {
        assert_eq!(one_line("a\n  b\tc"), "a b c");
        assert_eq!(one_line(&"x".repeat(400)).chars().count(), 301);
    }
}
