//! Prometheus metrics at `/metrics` (text exposition format, `prometheus-client`). Names
//! follow Prometheus conventions: base units (bytes, seconds), `_total` on counters.
//! Counters and histograms cover the jobs this service ran; `vmshift_jobs` covers every
//! job in the journal (the CLI's too), counted at scrape time.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Mutex;
use vmshift_runner::JobEvent;

type Labels = Vec<(String, String)>;

/// The service's metrics.
pub struct Metrics {
    registry: Registry,
    jobs: Family<Labels, Gauge>,
    copied: Counter,
    rate: Family<Labels, Gauge>,
    phase: Family<Labels, Histogram>,
    pivot: Histogram,
    verify_failures: Counter,
    /// Per running job: the last progress sample's done bytes (for the counter's deltas).
    last_done: Mutex<HashMap<String, u64>>,
}

fn seconds_buckets() -> Histogram {
    Histogram::new([
        0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("vmshift");
        let jobs = Family::<Labels, Gauge>::default();
        let copied = Counter::default();
        let rate = Family::<Labels, Gauge>::default();
        let phase =
            Family::<Labels, Histogram>::new_with_constructor(seconds_buckets as fn() -> Histogram);
        let pivot = Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]);
        let verify_failures = Counter::default();
        registry.register(
            "jobs",
            "Jobs in the journal by kind and status",
            jobs.clone(),
        );
        registry.register(
            "copied_bytes",
            "Guest bytes copied by jobs this service ran",
            copied.clone(),
        );
        registry.register(
            "job_rate_bytes_per_second",
            "Current copy rate of each running job, bytes/s",
            rate.clone(),
        );
        registry.register(
            "phase_duration_seconds",
            "How long each job phase took",
            phase.clone(),
        );
        registry.register(
            "pivot_duration_seconds",
            "Live moves: the largest per-disk pivot pause",
            pivot.clone(),
        );
        registry.register(
            "verification_failures",
            "Jobs whose copy did not verify",
            verify_failures.clone(),
        );
        Metrics {
            registry,
            jobs,
            copied,
            rate,
            phase,
            pivot,
            verify_failures,
            last_done: Mutex::new(HashMap::new()),
        }
    }
}

impl Metrics {
    /// Accounts one event of job `job_id`.
    pub fn observe(&self, job_id: &str, event: &JobEvent) {
        match event {
            JobEvent::Progress(p) if p.phase == "copy" => {
                let mut last = self.last_done.lock().unwrap_or_else(|e| e.into_inner());
                let before = last.insert(job_id.to_string(), p.done_bytes).unwrap_or(0);
                self.copied.inc_by(p.done_bytes.saturating_sub(before));
                self.rate
                    .get_or_create(&vec![("job_id".into(), job_id.into())])
                    .set(i64::try_from(p.rate_bytes_per_sec).unwrap_or(i64::MAX));
            }
            JobEvent::Phase {
                phase,
                duration_ms: Some(ms),
                ..
            } => {
                let name = serde_json::to_value(phase)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                self.phase
                    .get_or_create(&vec![("phase".into(), name)])
                    .observe(*ms as f64 / 1000.0);
            }
            JobEvent::Report { report, .. } => {
                if let Some(ms) = report.pivot_ms {
                    self.pivot.observe(ms as f64 / 1000.0);
                }
                if report.verification.result == "mismatch" {
                    self.verify_failures.inc();
                }
            }
            _ => {}
        }
    }

    /// The job ended: its rate gauge goes away.
    pub fn job_ended(&self, job_id: &str) {
        self.rate.remove(&vec![("job_id".into(), job_id.into())]);
        self.last_done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(job_id);
    }

    /// The exposition text, with `vmshift_jobs` counted from `counts` ((kind, status) → n).
    pub fn render(&self, counts: &HashMap<(String, String), i64>) -> String {
        self.jobs.clear();
        for ((kind, status), n) in counts {
            self.jobs
                .get_or_create(&vec![
                    ("kind".into(), kind.clone()),
                    ("status".into(), status.clone()),
                ])
                .set(*n);
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmshift_runner::Progress;

    fn progress(done: u64, rate: u64) -> JobEvent {
        JobEvent::Progress(Progress {
            phase: "copy".into(),
            done_bytes: done,
            total_bytes: 100,
            rate_bytes_per_sec: rate,
            eta_ms: None,
            disks: Vec::new(),
        })
    }

    #[test]
    fn copied_bytes_count_progress_deltas_and_rates_go_with_their_job() {
        let m = Metrics::default();
        m.observe("a", &progress(40, 7));
        m.observe("a", &progress(100, 9));
        m.observe("b", &progress(5, 1));
        let counts = HashMap::from([(("offline".into(), "running".into()), 2)]);
        let text = m.render(&counts);
        assert!(text.contains("vmshift_copied_bytes_total 105"), "{text}");
        assert!(
            text.contains("vmshift_job_rate_bytes_per_second{job_id=\"a\"} 9"),
            "{text}"
        );
        assert!(
            text.contains("vmshift_jobs{kind=\"offline\",status=\"running\"} 2"),
            "{text}"
        );
        m.job_ended("a");
        let text = m.render(&counts);
        assert!(!text.contains("job_id=\"a\""), "{text}");
    }
}
