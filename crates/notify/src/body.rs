//! The body every notification carries, and its signature.
//!
//! ```json
//! {"event": "job.succeeded", "job_id": "…", "sent_at": "2026-01-01T00:00:00.000Z",
//!  "data": {"event": "report", "report": {…}},
//!  "summary": {"status": "succeeded", "kind": "offline", "source": "/a/x.raw",
//!              "destination": "/b/x.raw", "bytes_copied": 4194304, "duration_ms": 120,
//!              "verification": "match", "error": null}}
//! ```
//!
//! `data` is the job event as its NDJSON line has it (`vmshift migrate --json`); `summary`
//! comes from the last report seen for the job (`null` before one exists, so in practice
//! on the end events only). `sent_at` is when vmshift queued the notification (RFC 3339
//! UTC): it is the same on every retry, so a retried delivery's body and signature are the
//! same bytes. Webhooks get the signature of those bytes in `X-Vmshift-Signature`.

use crate::event::EventKind;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use vmshift_core::report::Report;
use vmshift_runner::JobEvent;

/// A job's outcome in a few fields, from its report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// `succeeded`, `failed`, `cancelled`, `refused`, `rolled_back`.
    pub status: String,
    /// `offline`, `live` or `domain`.
    pub kind: String,
    /// The source image path (a live job's first disk).
    pub source: String,
    /// The target image path (a live job's first disk).
    pub destination: String,
    /// Bytes written as data to the target (the report's `bytes_copied`), bytes.
    pub bytes_copied: u64,
    /// Wall time of the whole job, ms.
    pub duration_ms: u64,
    /// The verification's result: `match`, `mismatch` or `skipped` (live: QEMU's mirror).
    pub verification: String,
    /// Why the job did not succeed, one line (`phase: message`).
    pub error: Option<String>,
}

impl Summary {
    /// The summary of `report`.
    pub fn of(report: &Report) -> Summary {
        let kind = serde_json::to_value(report.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        Summary {
            status: report.status.as_str().to_string(),
            kind,
            source: report.source.path.clone(),
            destination: report.destination.path.clone(),
            bytes_copied: report.bytes_copied,
            duration_ms: report.duration_ms,
            verification: report.verification.result.clone(),
            error: report
                .error
                .as_ref()
                .map(|e| format!("{}: {}", e.phase, e.message)),
        }
    }
}

/// The body bytes of a notification about `event` of job `job_id`, queued at `sent_at`
/// (RFC 3339).
pub fn body(
    kind: EventKind,
    job_id: &str,
    sent_at: &str,
    event: &JobEvent,
    summary: Option<&Summary>,
) -> Vec<u8> {
    let data = serde_json::to_value(event).unwrap_or(serde_json::Value::Null);
    let v = serde_json::json!({
        "event": kind.as_str(),
        "job_id": job_id,
        "sent_at": sent_at,
        "data": data,
        "summary": summary,
    });
    // Serializing a Value into memory cannot fail.
    serde_json::to_vec(&v).unwrap_or_default()
}

/// The `X-Vmshift-Signature` header value of `body` under `secret`:
/// `sha256=` and the lowercase hex HMAC-SHA256 of the exact body bytes (like GitHub's
/// `X-Hub-Signature-256`). Check it with
/// `printf %s "$BODY" | openssl dgst -sha256 -hmac "$SECRET"`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` fails only for fixed-size keys.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 2 * tag.len());
    out.push_str("sha256=");
    for b in tag {
        use std::fmt::Write as _;
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::{phase, report};
    use vmshift_core::{JobStatus, Phase};
    use vmshift_runner::PhaseState;

    // Expected values computed independently, once, with
    // `printf '%s' BODY | openssl dgst -sha256 -hmac SECRET`.
    #[test]
    fn the_signature_is_the_hmac_sha256_of_the_exact_body_bytes() {
        let secret = b"It's a Secret to Everybody";
        assert_eq!(
            signature(secret, b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        assert_eq!(
            signature(secret, br#"{"event":"job.succeeded","job_id":"j1"}"#),
            "sha256=aee148bf00163881ec8607d4adbaf8cd29f12639902e579e6baec1689940089c"
        );
        // One byte more is another signature.
        assert_ne!(
            signature(secret, b"Hello, World!\n"),
            signature(secret, b"Hello, World!")
        );
    }

    #[test]
    fn the_body_carries_the_event_its_ndjson_object_and_the_reports_summary() {
        let JobEvent::Report { report: r, .. } = report("j1", JobStatus::Failed) else {
            unreachable!()
        };
        let mut r = *r;
        r.bytes_copied = 4096;
        r.duration_ms = 12;
        r.source.path = "/a/x.raw".into();
        r.verification.result = "skipped".into();
        r.error = Some(vmshift_core::report::JobError {
            phase: Phase::Copy,
            message: "no space left on /b".into(),
        });
        let s = Summary::of(&r);
        let e = JobEvent::Report {
            report: Box::new(r),
            path: None,
        };
        let b = body(
            EventKind::Failed,
            "j1",
            "2026-01-01T00:00:00.000Z",
            &e,
            Some(&s),
        );
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["event"], "job.failed");
        assert_eq!(v["job_id"], "j1");
        assert_eq!(v["sent_at"], "2026-01-01T00:00:00.000Z");
        assert_eq!(v["data"]["event"], "report");
        assert_eq!(v["data"]["report"]["status"], "failed");
        assert_eq!(v["summary"]["status"], "failed");
        assert_eq!(v["summary"]["kind"], "offline");
        assert_eq!(v["summary"]["source"], "/a/x.raw");
        assert_eq!(v["summary"]["bytes_copied"], 4096);
        assert_eq!(v["summary"]["duration_ms"], 12);
        assert_eq!(v["summary"]["verification"], "skipped");
        assert_eq!(v["summary"]["error"], "copy: no space left on /b");

        let p = phase(Phase::Verify, PhaseState::Ended);
        let v: serde_json::Value =
            serde_json::from_slice(&body(EventKind::Phase, "j1", "t", &p, None)).unwrap();
        assert_eq!(
            v["data"],
            serde_json::from_str::<serde_json::Value>(&p.to_json_line().unwrap()).unwrap()
        );
        assert!(v["summary"].is_null());
    }
}
