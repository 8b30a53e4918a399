//! QMP job commands the driver issues outside its poll loop: cancel and wait, change speed.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::client::Qmp;
use crate::error::QmpError;

/// How long cleanup waits for QEMU to end a job or complete a pivot.
pub(crate) const CLEANUP_WAIT: Duration = Duration::from_secs(120);

/// Cancels job `id` (if still running) and waits until `query-jobs` no longer lists it,
/// dismissing it once concluded. Bounded by two minutes; QEMU can take seconds to cancel a
/// throttled or write-blocking mirror, and target nodes must not be reused before.
pub fn cancel_and_wait(qmp: &mut Qmp, id: &str) -> Result<(), QmpError> {
    let deadline = Instant::now() + CLEANUP_WAIT;
    let mut cancelled = false;
    loop {
        let jobs = qmp.execute("query-jobs", None)?;
        let status = jobs.as_array().and_then(|a| {
            a.iter()
                .find(|j| j.get("id").and_then(Value::as_str) == Some(id))
                .map(|j| {
                    j.get("status")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned()
                })
        });
        match status.as_deref() {
            None => return Ok(()),
            Some("concluded") => {
                qmp.call("job-dismiss", json!({"id": id}))?;
            }
            Some("aborting") | Some("null") | Some("pending") | Some("waiting") => {}
            Some(_) if !cancelled => {
                match qmp.call("job-cancel", json!({"id": id})) {
                    Ok(_) => {}
                    Err(QmpError::Command { .. }) => {} // raced with its own end
                    Err(e) => return Err(e),
                }
                cancelled = true;
            }
            Some(_) => {}
        }
        if Instant::now() > deadline {
            return Err(QmpError::Timeout {
                command: format!("job-cancel {id} (job still listed)"),
                timeout: CLEANUP_WAIT,
            });
        }
        qmp.pump(Duration::from_millis(100))?;
        qmp.take_events();
    }
}
