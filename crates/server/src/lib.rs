//! `vmshift serve`: the HTTP front end. Like the CLI it only turns input into
//! `JobRequest`s and renders `JobEvent`s; the [`vmshift_runner::Runner`] executes, on its own
//! threads. One journal serves both front ends, so jobs started by the CLI show up here and
//! can be cancelled from here, and a job started here survives a restart (interrupted, then
//! resumable).
//!
//! Routes: `/` (dashboard), `/assets/*`, `/healthz` (also `/api/v1/healthz`), `/metrics` (Prometheus), and the REST
//! API under `/api/v1` (bearer tokens; see [`api`] and `/api/v1/openapi.json`).

pub mod api;
pub mod auth;
pub mod config;
pub mod dashboard;
pub mod gate;
pub mod guard;
pub mod markdown;
pub mod metrics;
pub mod problem;
pub mod tracked;

use api::{check, datastores, events, jobs, openapi, AppState};
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{middleware, Router};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
pub use tracked::Observer;

/// How long running jobs get to reach a checkpoint when the service stops.
pub const STOP_GRACE: Duration = Duration::from_secs(120);

/// `vmshift serve` options from the command line.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// The configuration file; `None`: `/etc/vmshift/config.toml` if it exists.
    pub config: Option<PathBuf>,
    /// `ADDR:PORT`, overriding the configuration's `listen`.
    pub listen: Option<String>,
}

/// The router over `state` (everything but the listener).
pub fn app(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    let api = Router::new()
        .route("/jobs", get(jobs::list).post(jobs::start))
        .route("/jobs/{id}", get(jobs::show).patch(jobs::patch))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .route("/jobs/{id}/resume", post(jobs::resume))
        .route("/jobs/{id}/rollback", post(jobs::rollback))
        .route("/jobs/{id}/events", get(events::events))
        .route("/check", post(check::check))
        .route("/datastores", get(datastores::list))
        .route("/openapi.json", get(openapi::document))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            api::require_token,
        ));
    Router::new()
        .nest("/api/v1", api)
        // Liveness beside the API too (no token), where probes look for it first.
        .route("/api/v1/healthz", get(openapi::health))
        .route("/healthz", get(openapi::health))
        .route("/metrics", get(metrics))
        .route("/", get(dashboard::index))
        .route("/assets/{name}", get(dashboard::asset))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn metrics(axum::extract::State(s): api::Shared) -> axum::response::Response {
    let counts = tokio::task::spawn_blocking(job_counts)
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(&counts),
    )
        .into_response()
}

/// Jobs in the journal by (kind, status as shown).
fn job_counts() -> HashMap<(String, String), i64> {
    let mut out = HashMap::new();
    if let Ok(Some(j)) = vmshift_runner::journal::read_journal() {
        if let Ok((jobs, _)) = j.jobs() {
            for job in &jobs {
                let status = vmshift_runner::journal::shown_status(job);
                *out.entry((job.kind.clone(), status)).or_insert(0) += 1;
            }
        }
    }
    out
}

/// Runs the service until SIGTERM or SIGINT: then running jobs are interrupted (they keep
/// what a resume needs; up to [`STOP_GRACE`]) and the listener closes. `observers` are told
/// every event of every job it runs (the notifier).
///
/// # Errors
/// One line: the configuration, tokens file or a datastore is unusable, the address cannot
/// be bound, TLS files do not load.
pub fn serve(opts: &ServeOptions, observers: Vec<Observer>) -> Result<(), String> {
    let cfg = config::Config::load(opts.config.as_deref(), opts.listen.as_deref())?;
    let tokens = auth::Tokens::load(&cfg.tokens)?;
    if let Some(tls) = &cfg.tls {
        private_key_file(&tls.key)?;
    }
    let gate = gate::Gate::new(&cfg.datastores)?;
    let metrics = Arc::new(metrics::Metrics::default());
    let tracker = Arc::new(tracked::Tracker::new(metrics.clone(), observers));
    let state = Arc::new(AppState {
        runner: vmshift_runner::Runner::with_datastores(cfg.named_datastores.clone()),
        tracker: tracker.clone(),
        metrics,
        gate,
        tokens,
    });
    let listener = std::net::TcpListener::bind(cfg.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the service's threads: {e}"))?;
    let app = app(state.clone(), cfg.max_body_bytes);
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    let roots: Vec<String> = state
        .gate
        .roots()
        .iter()
        .map(|r| r.display().to_string())
        .collect();
    eprintln!(
        "vmshift serve: listening on {scheme}://{addr} (dashboard /, API /api/v1, metrics /metrics); datastores: {}",
        if roots.is_empty() { "none configured (every path is refused)".into() } else { roots.join(", ") }
    );
    rt.block_on(async move {
        let handle = axum_server::Handle::new();
        let stopper = handle.clone();
        tokio::spawn(async move {
            stop_signal().await;
            eprintln!("vmshift serve: stopping: interrupting running jobs (resume continues them)");
            let left = tokio::task::spawn_blocking(move || tracker.interrupt_all(STOP_GRACE))
                .await
                .unwrap_or(0);
            if left > 0 {
                eprintln!("vmshift serve: {left} job(s) still running after {} s; they are marked interrupted", STOP_GRACE.as_secs());
            }
            stopper.graceful_shutdown(Some(Duration::from_secs(5)));
        });
        let svc = app.into_make_service();
        match &cfg.tls {
            Some(tls) => {
                let _ = rustls::crypto::ring::default_provider().install_default();
                let rc = axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert, &tls.key)
                    .await
                    .map_err(|e| {
                        format!(
                            "TLS certificate {} / key {}: {e}",
                            tls.cert.display(),
                            tls.key.display()
                        )
                    })?;
                axum_server::from_tcp_rustls(listener, rc)
                    .handle(handle)
                    .serve(svc)
                    .await
            }
            None => axum_server::from_tcp(listener).handle(handle).serve(svc).await,
        }
        .map_err(|e| format!("the service stopped: {e}"))
    })
}

/// The TLS private key must be readable by its owner only, like the tokens file.
fn private_key_file(key: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(key).map_err(|e| format!("TLS key {}: {e}", key.display()))?;
    if m.mode() & 0o077 != 0 {
        return Err(format!(
            "TLS key {} is mode {:04o}: others could read it; chmod 600 {}",
            key.display(),
            m.mode() & 0o7777,
            key.display()
        ));
    }
    Ok(())
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
