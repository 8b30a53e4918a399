//! A real `vmshift serve` for the service tests: its own state directory, tokens file and
//! datastore in a test workspace, on a free loopback port; killed when dropped.
#![allow(dead_code, missing_docs)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const OPERATE: &str = "op-token-0123456789abcdef";
pub const READ: &str = "ro-token-0123456789abcdef";

pub struct Service {
    pub child: Child,
    pub base: String,
    pub store: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

/// Writes the tokens file and a config naming `store` (plus `extra` TOML) under `root`.
pub fn write_config(root: &Path, store: &Path, extra: &str) -> PathBuf {
    let tokens = root.join("tokens");
    std::fs::write(
        &tokens,
        format!("ops operate {OPERATE}\nviewer read {READ}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = root.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ntokens = \"{}\"\ndatastores = [\"{}\"]\n{extra}",
            tokens.display(),
            store.display()
        ),
    )
    .unwrap();
    config
}

impl Service {
    /// Starts the service over `root` (state in `root/state`, datastore `root/store`).
    pub fn start(root: &Path) -> Service {
        let store = root.join("store");
        std::fs::create_dir_all(&store).unwrap();
        let config = write_config(root, &store, "");
        Service::start_with(root, &config, &store)
    }

    pub fn start_with(root: &Path, config: &Path, store: &Path) -> Service {
        Service::start_in(config, store, &root.join("state"))
    }

    /// [`Service::start_with`] with the state directory at `state`.
    pub fn start_in(config: &Path, store: &Path, state: &Path) -> Service {
        let state = state.to_path_buf();
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("vmshift"))
            .arg("--config")
            .arg(config)
            .arg("serve")
            .env("VMSHIFT_STATE_DIR", &state)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let err = BufReader::new(child.stderr.take().unwrap());
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let url = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(url);
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("vmshift serve did not start: {}", log.lock().unwrap()));
        Service {
            child,
            base,
            store: store.to_path_buf(),
            state,
            config: config.to_path_buf(),
            stderr: log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// (status, content type, JSON body) of a request with `token` (`None`: no header).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String, Value) {
        self.call_as(method, path, token, body, "application/json")
    }

    /// [`Service::call`] with a body of `content_type`.
    pub fn call_as(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        content_type: &str,
    ) -> (u16, String, Value) {
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("Content-Type", content_type);
        }
        let req = req.body(body.unwrap_or("").to_string()).unwrap();
        let mut resp = agent(Duration::from_secs(120))
            .run(req)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = resp.body_mut().read_to_string().unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, ct, v)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let (s, _, v) = self.call("GET", path, Some(OPERATE), None);
        (s, v)
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (s, _, v) = self.call("POST", path, Some(OPERATE), Some(&body.to_string()));
        (s, v)
    }

    /// The raw text of `GET path` (metrics).
    pub fn text(&self, path: &str) -> String {
        agent(Duration::from_secs(60))
            .get(self.url(path))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    }

    /// Reads the job's SSE stream to its end (or `timeout`): the event objects in order.
    pub fn events(&self, id: &str, timeout: Duration) -> Vec<Value> {
        let resp = agent(timeout)
            .get(self.url(&format!("/api/v1/jobs/{id}/events")))
            .header("Authorization", format!("Bearer {OPERATE}"))
            .call()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut out = Vec::new();
        let mut reader = BufReader::new(resp.into_body().into_reader());
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if let Some(data) = line.trim_end().strip_prefix("data: ") {
                out.push(serde_json::from_str(data).unwrap());
            }
        }
        out
    }

    /// Polls `GET /api/v1/jobs/{id}` until `pred` holds (or panics after `secs`).
    pub fn wait_job(&self, id: &str, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            let (s, v) = self.get(&format!("/api/v1/jobs/{id}"));
            if s == 200 && pred(&v) {
                return v;
            }
            assert!(Instant::now() < until, "job {id} never got there: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the service with SIGTERM; its exit code.
    pub fn terminate(mut self) -> (i32, String) {
        unsafe_kill(self.child.id(), libc::SIGTERM);
        let until = Instant::now() + Duration::from_secs(150);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < until, "vmshift serve ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        std::thread::sleep(Duration::from_millis(100));
        let log = self.stderr.lock().unwrap().clone();
        (status.code().unwrap_or(-1), log)
    }

    /// Kills the service (SIGKILL), as a crash would.
    /// The service's open descriptors of deleted journal files (a split journal).
    pub fn deleted_journal_fds(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .flatten()
        {
            if let Ok(t) = std::fs::read_link(e.path()) {
                let t = t.display().to_string();
                if t.contains("journal.sqlite") && t.ends_with("(deleted)") {
                    out.push(t);
                }
            }
        }
        out
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_kill(pid: u32, sig: i32) {
    let pid = i32::try_from(pid).unwrap();
    // SAFETY: kill(2) on our own child's pid; no memory is touched.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// An HTTP client that returns 4xx/5xx responses rather than errors, with a deadline.
pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .new_agent()
}

/// Follows the job's event stream in a thread: its whole text once it ends.
pub fn follow(url: String, timeout: Duration) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let resp = agent(timeout)
            .get(url)
            .header("Authorization", format!("Bearer {OPERATE}"))
            .call()
            .unwrap();
        read_all(resp.into_body().into_reader())
    })
}

/// Reads a whole stream into a string.
pub fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    r.read_to_string(&mut s).unwrap();
    s
}
