//! The dashboard in a real headless Chromium (Debian `chromium` + `chromium-driver`) driven
//! over WebDriver: sign in with a token, start an offline move through the form (Start is
//! enabled only by a check of the current values), watch its progress bar advance to
//! succeeded, read its report, cancel a second one through the in-page confirmation, and see
//! the 401 of a wrong token and the 403 of a read token. Screenshots of every step go to
//! `target/browser-artifacts/`. The service and the images are real; the assertions are on
//! the DOM and, independently, on the API and the images.

mod common;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::future::Future;
use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const OPERATE_TOKEN: &str = "browser-test-operate-token-0123456789";
const READ_TOKEN: &str = "browser-test-read-token-0123456789";
/// Generous: other QEMU tests share the 2 cores.
const LONG: u64 = 90;
const SHORT: u64 = 30;

/// `vmshift serve` on a free port; SIGTERM on drop.
struct Service {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Service {
    fn start(ws: &Ws, stores: &[&Path]) -> Service {
        let tokens = ws.path("tokens");
        std::fs::write(
            &tokens,
            format!("admin operate {OPERATE_TOKEN}\nviewer read {READ_TOKEN}\n"),
        )
        .unwrap();
        std::fs::set_permissions(&tokens, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let list: Vec<String> = stores.iter().map(|s| format!("{:?}", p(s))).collect();
        let cfg = ws.path("config.toml");
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:0\"\ntokens = {:?}\ndatastores = [{}]\n",
                p(&tokens),
                list.join(", ")
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_vmshift"))
            .args(["serve", "--config", p(&cfg)])
            .env("VMSHIFT_STATE_DIR", ws.path("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let keep = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(rest) = line.split("listening on http://127.0.0.1:").nth(1) {
                    let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    let _ = tx.send(port.parse::<u16>().unwrap());
                }
                keep.lock().unwrap().push(line);
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(LONG))
            .expect("vmshift serve never said where it listens");
        Service { child, port, log }
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One plain HTTP/1.1 request: (status, raw head, body).
    fn http(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(SHORT)))
            .unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n",
            self.port
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_string()
        };
        (status, head.to_string(), body)
    }

    /// `GET /api/v1{path}` with the operate token, as JSON.
    fn get(&self, path: &str) -> Value {
        let auth = format!("Bearer {OPERATE_TOKEN}");
        let (status, _, body) = self.http(
            "GET",
            &format!("/api/v1{path}"),
            &[("Authorization", &auth)],
        );
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(i32::try_from(self.child.id()).unwrap()) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let until = Instant::now() + Duration::from_secs(SHORT);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `chromedriver` on a free port; killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start(log: &Path) -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian chromium-driver; scripts/install-deps.sh installs it)");
        let until = Instant::now() + Duration::from_secs(SHORT);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "chromedriver never listened");
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the screenshots go: `$CARGO_TARGET_DIR/browser-artifacts` or the workspace's
/// `target/browser-artifacts`, emptied of an earlier run's pictures.
fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let dir = target.join("browser-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "png") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    dir
}

/// The browser session and where its pictures go.
struct Ui {
    c: Client,
    shots: PathBuf,
}

impl Ui {
    async fn shot(&self, name: &str) {
        let png = self.c.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    async fn js(&self, script: &str) -> Value {
        self.c.execute(script, Vec::new()).await.unwrap()
    }

    async fn el(&self, css: &str) -> fantoccini::elements::Element {
        self.c.find(Locator::Css(css)).await.unwrap()
    }

    async fn click(&self, css: &str) {
        self.el(css).await.click().await.unwrap();
    }

    async fn fill(&self, css: &str, text: &str) {
        let e = self.el(css).await;
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    async fn enabled(&self, css: &str) -> bool {
        self.el(css).await.is_enabled().await.unwrap()
    }

    async fn shown(&self, css: &str) -> bool {
        match self.c.find(Locator::Css(css)).await {
            Ok(e) => e.is_displayed().await.unwrap_or(false),
            Err(_) => false,
        }
    }

    async fn text(&self, css: &str) -> String {
        self.el(css).await.text().await.unwrap()
    }

    /// Polls `f` until it gives `Some` (every 200 ms, up to `secs`); on timeout saves a
    /// screenshot named after `what` and fails.
    async fn eventually<T, F, Fut>(&self, what: &str, secs: u64, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f().await {
                return v;
            }
            if Instant::now() >= until {
                let name: String = what
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .collect();
                self.shot(&format!("failed-{name}")).await;
                let page = self.js("return document.body.innerText").await;
                panic!("timed out after {secs} s waiting for {what}; the page says:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The row of job `id`: (status, data-percent, rate text, ETA text).
    async fn row(&self, id: &str) -> Option<(String, u64, String, String)> {
        let v = self
            .c
            .execute(
                "const tr = document.querySelector(`#jobs tbody tr[data-job-id=\"${arguments[0]}\"]`);
                 if (!tr) return null;
                 return [tr.dataset.status, tr.querySelector('.progress').dataset.percent,
                         tr.querySelector('.rate').textContent, tr.querySelector('.eta').textContent];",
                vec![json!(id)],
            )
            .await
            .unwrap();
        let a = v.as_array()?;
        Some((
            a[0].as_str()?.to_string(),
            a[1].as_str()?.parse().ok()?,
            a[2].as_str()?.to_string(),
            a[3].as_str()?.to_string(),
        ))
    }

    /// Fills the form for an offline move of `src` into `to` at `mib_s` MiB/s.
    async fn offline_form(&self, src: &Path, to: &Path, mib_s: &str) {
        self.el("#kind")
            .await
            .select_by_value("offline")
            .await
            .unwrap();
        self.fill("#source", p(src)).await;
        self.fill("#to", &format!("{}/", p(to))).await;
        self.fill("#bwlimit", mib_s).await;
    }

    /// Clicks Check and waits for a go.
    async fn check_go(&self, what: &str) {
        self.click("#check").await;
        self.eventually(what, LONG, || async {
            let v = self
                .js("return [document.querySelector('#plan-verdict').className, !document.querySelector('#start').disabled, document.querySelector('#plan').hidden]")
                .await;
            (v[0] == "go" && v[1] == true && v[2] == false).then_some(())
        })
        .await;
    }

    /// Clicks Start and returns the new job's id (the job the detail pane then shows).
    async fn start(&self) -> String {
        const SHOWN: &str =
            "const d = document.querySelector('#detail'); return d.hidden ? null : (d.dataset.jobId || null)";
        let before = self.js(SHOWN).await;
        self.click("#start").await;
        self.eventually("the started job's detail", LONG, || async {
            let v = self.js(SHOWN).await;
            (v != before)
                .then(|| v.as_str().map(str::to_string))
                .flatten()
        })
        .await
    }
}

fn image(ws: &Ws, name: &str, data_mib: u64) -> PathBuf {
    let img = ws.path(name);
    qemu_img(&["create", "-q", "-f", "qcow2", p(&img), "512M"]);
    qemu_io("qcow2", &img, &[&format!("write -P 7 0 {data_mib}M")]);
    img
}

#[tokio::test(flavor = "current_thread")]
async fn dashboard_starts_watches_cancels_and_reports_in_a_real_browser() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: apt-get install chromium chromium-driver (scripts/install-deps.sh)"
    );
    let began = Instant::now();
    let ws = Ws::new();
    let from = ws.mkdir("from");
    let to = ws.mkdir("to");
    let src1 = image(&ws, "from/fast.qcow2", 160);
    let src2 = image(&ws, "from/slow.qcow2", 256);
    let svc = Service::start(&ws, &[&from, &to]);
    let origin = svc.origin();

    // Server side first: the page's policy, and a cookie alone is no credential.
    let (status, head, _) = svc.http("GET", "/", &[]);
    assert_eq!(status, 200);
    let head_l = head.to_ascii_lowercase();
    assert!(
        head_l.contains("content-security-policy:") && head_l.contains("script-src 'self'"),
        "{head}"
    );
    let cookie = format!("token={OPERATE_TOKEN}; vmshift={OPERATE_TOKEN}");
    let (status, _, _) = svc.http("GET", "/api/v1/jobs", &[("Cookie", &cookie)]);
    assert_eq!(status, 401, "a cookie alone must not authorize");

    let driver = Driver::start(&ws.path("chromedriver.log"));
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1100", "--no-first-run", "--no-default-browser-check",
                     format!("--user-data-dir={}", ws.path("chromium").display())],
        }),
    );
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session in headless Chromium");
    let ui = Ui {
        c,
        shots: artifacts(),
    };
    let outcome = std::panic::AssertUnwindSafe(scenario(&ui, &svc, &origin, &src1, &src2, &to));
    let result = futures_catch(outcome).await;
    let _ = ui.c.clone().close().await;
    drop(driver);
    if let Err(e) = result {
        eprintln!(
            "vmshift serve said:\n{}",
            svc.log.lock().unwrap().join("\n")
        );
        std::panic::resume_unwind(e);
    }
    eprintln!(
        "browser test: {:.1} s; screenshots in {}",
        began.elapsed().as_secs_f64(),
        ui.shots.display()
    );
}

/// Runs `f`, catching a panic so the browser and chromedriver are closed either way.
async fn futures_catch<F: Future<Output = ()>>(
    f: std::panic::AssertUnwindSafe<F>,
) -> Result<(), Box<dyn std::any::Any + Send>> {
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.as_mut().poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(())) => std::task::Poll::Ready(Ok(())),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    })
    .await
}

async fn scenario(ui: &Ui, svc: &Service, origin: &str, src1: &Path, src2: &Path, to: &Path) {
    ui.c.goto(&format!("{origin}/")).await.unwrap();
    ui.eventually("the page to load", SHORT, || async {
        ui.shown("#token").await.then_some(())
    })
    .await;
    ui.shot("01-signed-out").await;

    // Nothing on the page comes from another origin.
    let urls = ui
        .js("return [...document.querySelectorAll('script[src], link[href], img[src], iframe[src], source[src]')]
                 .map(e => e.src || e.href)
                 .concat(performance.getEntriesByType('resource').map(e => e.name))")
        .await;
    let urls: Vec<&str> = urls
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        urls.iter().any(|u| u.ends_with("/assets/app.js")),
        "{urls:?}"
    );
    for u in &urls {
        assert!(
            u.starts_with(&format!("{origin}/")),
            "{u} is not same-origin"
        );
    }

    // A wrong token: the service's 401 message, still signed out.
    ui.fill("#token", "not-a-known-token-0123456789").await;
    ui.click("#sign-in").await;
    let msg = ui
        .eventually("the 401 message", SHORT, || async {
            let m = ui.text("#message").await;
            m.contains("401").then_some(m)
        })
        .await;
    assert!(msg.contains("not known"), "{msg}");
    assert!(!ui.shown("#sign-out").await);
    ui.shot("02-wrong-token-401").await;

    // The operate token: the datastores appear; the token is in sessionStorage, no cookie.
    ui.fill("#token", OPERATE_TOKEN).await;
    ui.click("#sign-in").await;
    ui.eventually("signed in with both datastores", SHORT, || async {
        let n = ui
            .js("return document.querySelectorAll('#datastores tbody tr').length")
            .await;
        (ui.shown("#sign-out").await && n == 2).then_some(())
    })
    .await;
    let store = ui
        .js("return [sessionStorage.getItem('vmshift.token'), document.cookie]")
        .await;
    assert_eq!(store, json!([OPERATE_TOKEN, ""]));
    assert!(!ui.shown("#message").await, "{}", ui.text("#message").await);
    ui.shot("03-signed-in").await;

    // The form: Start stays disabled until a check of these very values says go.
    ui.offline_form(src1, to, "20").await;
    assert!(!ui.enabled("#start").await, "Start before any check");
    ui.check_go("the first check's go").await;
    let plan = ui.text("#plan").await;
    assert!(plan.contains(p(src1)), "{plan}");
    ui.shot("04-check-go").await;
    ui.fill("#bwlimit", "24").await;
    assert!(!ui.enabled("#start").await, "Start after an edit");
    ui.shot("05-edited-start-disabled").await;
    ui.check_go("the second check's go").await;
    let fast = ui.start().await;
    let started = ui.text("#message").await;
    assert!(started.contains(&fast), "message {started:?}, job {fast}");

    // The progress bar advances, with rate and ETA, to 100 % and succeeded.
    let mut seen: Vec<u64> = Vec::new();
    let mut rate_eta = None;
    let until = Instant::now() + Duration::from_secs(LONG);
    loop {
        let Some((status, pct, rate, eta)) = ui.row(&fast).await else {
            assert!(Instant::now() < until, "the started job has no row");
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if status == "running" {
            if seen.last() != Some(&pct) {
                seen.push(pct);
            }
            if pct > 0 && pct < 100 && !rate.is_empty() && rate_eta.is_none() {
                rate_eta = Some((rate, eta));
                ui.shot("06-progress").await;
            }
        }
        if status == "succeeded" && pct == 100 {
            break;
        }
        assert!(
            status == "running" && Instant::now() < until,
            "the first job is {status} at {pct} % (seen {seen:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        seen.windows(2).any(|w| w[0] < w[1] && w[1] < 100),
        "the bar never advanced while running: {seen:?}"
    );
    let (rate, eta) = rate_eta.expect("rate and ETA while running");
    assert!(rate.ends_with(" MiB/s"), "{rate}");
    let eta_ok = eta.len() >= 5
        && eta.as_bytes()[eta.len() - 3] == b':'
        && eta.chars().filter(char::is_ascii_digit).count() == eta.len() - 1;
    assert!(eta_ok, "ETA {eta}");
    ui.shot("07-succeeded").await;

    // Its detail: the report (Markdown rendered) with the verification digests, the phase
    // timeline, the throughput chart; Rollback offered, Cancel not.
    let api_fast = svc.get(&format!("/jobs/{fast}"));
    let digest = api_fast["report"]["verification"]["source_digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!digest.is_empty(), "{api_fast}");
    assert_eq!(
        api_fast["report"]["verification"]["destination_digest"],
        digest.as_str()
    );
    ui.click(&format!("#jobs tbody tr[data-job-id=\"{fast}\"]"))
        .await;
    let report = ui
        .eventually("the report", SHORT, || async {
            let r = ui.text("#report").await;
            r.contains(&digest).then_some(r)
        })
        .await;
    assert!(report.contains("Status: succeeded"), "{report}");
    assert!(report.contains("Verification ("), "{report}");
    let strong = ui.js("return document.querySelector('#report strong') !== null && document.querySelector('#report table') !== null").await;
    assert_eq!(strong, true, "the Markdown is rendered, not shown raw");
    let phases = ui
        .js("return [...document.querySelectorAll('#timeline li')].map(li => [li.dataset.phase, li.querySelector('.dur').textContent, li.className])")
        .await;
    let phases = phases.as_array().unwrap();
    assert!(
        phases.iter().any(|p| p[0] == "copy" && p[1] != ""),
        "{phases:?}"
    );
    assert!(phases.iter().all(|p| p[2] == "done"), "{phases:?}");
    let points = ui
        .js("return [document.querySelector('#chart').dataset.points, document.querySelector('#chart-line').getAttribute('points')]")
        .await;
    let n: usize = points[0].as_str().unwrap().parse().unwrap();
    assert!(n >= 2, "chart points: {points}");
    assert_eq!(points[1].as_str().unwrap().split(' ').count(), n);
    assert!(ui.shown("#rollback").await && !ui.shown("#cancel").await);
    ui.shot("08-report").await;

    // A second, slow one: open it, Cancel, confirm in the page: cancelled.
    ui.offline_form(src2, to, "8").await;
    assert!(!ui.enabled("#start").await);
    ui.check_go("the slow job's check").await;
    let slow = ui.start().await;
    assert_ne!(slow, fast);
    ui.eventually("the slow job copying", LONG, || async {
        let (status, pct, _, _) = ui.row(&slow).await?;
        (status == "running" && pct > 0).then_some(())
    })
    .await;
    ui.click(&format!("#jobs tbody tr[data-job-id=\"{slow}\"]"))
        .await;
    ui.eventually("the Cancel button", SHORT, || async {
        ui.shown("#cancel").await.then_some(())
    })
    .await;
    ui.click("#cancel").await;
    ui.eventually("the confirmation", SHORT, || async {
        ui.shown("#confirm-yes").await.then_some(())
    })
    .await;
    let ask = ui.text("#confirm-text").await;
    assert!(ask.contains(&slow) && ask.contains("Cancel"), "{ask}");
    ui.shot("09-confirm-cancel").await;
    ui.click("#confirm-yes").await;
    ui.eventually("the slow job cancelled", LONG, || async {
        let (status, _, _, _) = ui.row(&slow).await?;
        let detail = ui.text("#detail-status").await;
        (status == "cancelled" && detail == "cancelled" && ui.shown("#resume").await).then_some(())
    })
    .await;
    assert!(!ui.shown("#confirm").await && !ui.shown("#cancel").await);
    ui.shot("10-cancelled").await;

    // The journal-backed API agrees, and the moved image is the source's content.
    let api_slow = svc.get(&format!("/jobs/{slow}"));
    assert_eq!(api_slow["status"], "cancelled", "{api_slow}");
    let partial = Path::new(api_slow["destination"].as_str().unwrap());
    assert!(
        !partial.exists(),
        "the cancelled job's partial target {} is still there",
        partial.display()
    );
    let api_fast = svc.get(&format!("/jobs/{fast}"));
    assert_eq!(api_fast["status"], "succeeded", "{api_fast}");
    let target = PathBuf::from(api_fast["destination"].as_str().unwrap());
    assert!(target.starts_with(to), "{}", target.display());
    let cmp = Command::new("qemu-img")
        .args(["compare", "-U", p(src1), p(&target)])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(
        cmp.success(),
        "qemu-img compare {} {}",
        src1.display(),
        target.display()
    );

    // A read token sees everything but is refused a rollback: the 403 is shown.
    ui.click("#sign-out").await;
    assert!(ui.shown("#token").await);
    assert_eq!(
        ui.js("return sessionStorage.getItem('vmshift.token')")
            .await,
        Value::Null
    );
    ui.fill("#token", READ_TOKEN).await;
    ui.click("#sign-in").await;
    ui.eventually("the job rows for the read token", SHORT, || async {
        ui.row(&fast).await.map(|_| ())
    })
    .await;
    ui.click(&format!("#jobs tbody tr[data-job-id=\"{fast}\"]"))
        .await;
    ui.eventually("the Rollback button", SHORT, || async {
        ui.shown("#rollback").await.then_some(())
    })
    .await;
    ui.click("#rollback").await;
    ui.eventually("the rollback confirmation", SHORT, || async {
        ui.shown("#confirm-yes").await.then_some(())
    })
    .await;
    ui.click("#confirm-yes").await;
    let msg = ui
        .eventually("the 403 message", SHORT, || async {
            let m = ui.text("#message").await;
            m.contains("403").then_some(m)
        })
        .await;
    assert!(msg.contains("read role"), "{msg}");
    ui.shot("11-read-token-403").await;
    assert!(target.exists(), "a refused rollback deleted the target");
    assert_eq!(svc.get(&format!("/jobs/{fast}"))["status"], "succeeded");

    ui.click("#sign-out").await;
    assert!(ui.shown("#token").await);
    let rows = ui
        .js("return document.querySelectorAll('#jobs tbody tr').length")
        .await;
    assert_eq!(rows, 0);
    ui.shot("12-signed-out-again").await;
}
