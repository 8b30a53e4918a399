//! The events a notification can be about, and which job events become one.
//!
//! The mapping is a pure function over one job's event stream ([`StreamMap`]): `Job` →
//! `job.started`; `Phase` (started and ended) → `job.phase`; the job's `Report` →
//! `job.succeeded`, `job.failed` or `job.cancelled` by its status. A report with status
//! `refused` (the check refused the job before anything was written) is a `job.failed`
//! (its summary's status says `refused`): the job was announced as started, so it is
//! announced as ended. `rolled_back` is no end event (a rollback is not the end of the job
//! it names). Progress, notes, warnings, log lines and results are not sent.
//!
//! A stream may carry jobs inside a job (a domain job's per-disk offline jobs, a live
//! rollback's move back started from a running job): only the outermost job of the stream
//! is notified; a nested job's events are covered by the outer job's phases and its end
//! report. Jobs that follow one another on a stream (the demo's parts) are each notified
//! under their own id.

use serde::{Deserialize, Serialize};
use vmshift_core::JobStatus;
use vmshift_runner::JobEvent;

/// A notification event, named as in the config and the body (`job.started`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// The job exists (its first event).
    #[serde(rename = "job.started")]
    Started,
    /// A phase started or ended.
    #[serde(rename = "job.phase")]
    Phase,
    /// The job's report says `succeeded`.
    #[serde(rename = "job.succeeded")]
    Succeeded,
    /// The job's report says `failed` (or `refused`).
    #[serde(rename = "job.failed")]
    Failed,
    /// The job's report says `cancelled`.
    #[serde(rename = "job.cancelled")]
    Cancelled,
}

impl EventKind {
    /// Every event, in a job's order.
    pub const ALL: [EventKind; 5] = [
        EventKind::Started,
        EventKind::Phase,
        EventKind::Succeeded,
        EventKind::Failed,
        EventKind::Cancelled,
    ];

    /// The three end events (the notify command's default).
    pub const ENDS: [EventKind; 3] = [
        EventKind::Succeeded,
        EventKind::Failed,
        EventKind::Cancelled,
    ];

    /// The event's name (`job.started`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Started => "job.started",
            EventKind::Phase => "job.phase",
            EventKind::Succeeded => "job.succeeded",
            EventKind::Failed => "job.failed",
            EventKind::Cancelled => "job.cancelled",
        }
    }

    /// The end event of a report with this status (`None`: running, rolled back).
    pub fn of_status(status: JobStatus) -> Option<EventKind> {
        match status {
            JobStatus::Succeeded => Some(EventKind::Succeeded),
            JobStatus::Failed | JobStatus::Refused => Some(EventKind::Failed),
            // Stopped on request too (SIGTERM), though resumable: `summary.status` says which.
            JobStatus::Cancelled | JobStatus::Interrupted => Some(EventKind::Cancelled),
            JobStatus::Running | JobStatus::RolledBack => None,
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which job a stream's events belong to, as it goes: the jobs opened (`Job` events) and not
/// yet closed (their `Report`), outermost first.
#[derive(Debug, Default, Clone)]
pub struct StreamMap {
    open: Vec<String>,
}

impl StreamMap {
    /// The notification `e` gives, as (job id, event), on the stream of the job a front end
    /// knows as `caller_job_id` (used when the stream has not named its job yet).
    pub fn map(&mut self, caller_job_id: &str, e: &JobEvent) -> Option<(String, EventKind)> {
        match e {
            JobEvent::Job { job_id, .. } => {
                self.open.push(job_id.clone());
                (self.open.len() == 1).then(|| (job_id.clone(), EventKind::Started))
            }
            JobEvent::Phase { .. } => match self.open.as_slice() {
                [] => Some((caller_job_id.to_string(), EventKind::Phase)),
                [only] => Some((only.clone(), EventKind::Phase)),
                _ => None,
            },
            JobEvent::Report { report, .. } => {
                let outermost = match self.open.iter().position(|id| *id == report.job_id) {
                    Some(depth) => {
                        self.open.truncate(depth);
                        depth == 0
                    }
                    None => self.open.is_empty(),
                };
                if !outermost {
                    return None;
                }
                EventKind::of_status(report.status).map(|k| (report.job_id.clone(), k))
            }
            JobEvent::Progress(_)
            | JobEvent::Note { .. }
            | JobEvent::Warning { .. }
            | JobEvent::GuestCheck { .. }
            | JobEvent::Result { .. }
            | JobEvent::Log { .. } => None,
        }
    }

    /// Whether every job the stream opened has ended.
    pub fn is_idle(&self) -> bool {
        self.open.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vmshift_core::report::Report;
    use vmshift_core::{JobKind, Phase};
    use vmshift_runner::PhaseState;

    pub(crate) fn job(id: &str) -> JobEvent {
        JobEvent::Job {
            job_id: id.into(),
            kind: JobKind::Offline,
            resumed: Some(false),
        }
    }

    pub(crate) fn phase(p: Phase, state: PhaseState) -> JobEvent {
        JobEvent::Phase {
            phase: p,
            state,
            duration_ms: (state == PhaseState::Ended).then_some(7),
        }
    }

    pub(crate) fn report(id: &str, status: JobStatus) -> JobEvent {
        let mut r = Report::new(id, JobKind::Offline, "2026-01-01T00:00:00.000Z");
        r.status = status;
        JobEvent::Report {
            report: Box::new(r),
            path: None,
        }
    }

    fn names(events: &[JobEvent]) -> Vec<(String, &'static str)> {
        let mut m = StreamMap::default();
        events
            .iter()
            .filter_map(|e| m.map("caller", e))
            .map(|(id, k)| (id, k.as_str()))
            .collect()
    }

    #[test]
    fn a_job_maps_to_started_its_phases_and_the_end_event_of_its_report() {
        let got = names(&[
            job("j1"),
            phase(Phase::Check, PhaseState::Started),
            JobEvent::Log { line: "x".into() },
            phase(Phase::Check, PhaseState::Ended),
            JobEvent::Note {
                message: "n".into(),
            },
            report("j1", JobStatus::Succeeded),
        ]);
        let j = |k| ("j1".to_string(), k);
        assert_eq!(
            got,
            vec![
                j("job.started"),
                j("job.phase"),
                j("job.phase"),
                j("job.succeeded")
            ]
        );
    }

    #[test]
    fn report_statuses_map_to_end_events_refused_as_failed_rolled_back_to_none() {
        let end = |s| names(&[job("j"), report("j", s)]).pop().unwrap().1;
        assert_eq!(end(JobStatus::Succeeded), "job.succeeded");
        assert_eq!(end(JobStatus::Failed), "job.failed");
        assert_eq!(end(JobStatus::Cancelled), "job.cancelled");
        assert_eq!(end(JobStatus::Refused), "job.failed");
        assert_eq!(end(JobStatus::RolledBack), "job.started");
        assert_eq!(end(JobStatus::Running), "job.started");
    }

    #[test]
    fn a_nested_jobs_events_are_not_sent_and_the_outer_job_ends_with_its_own_report() {
        let got = names(&[
            job("domain"),
            phase(Phase::Check, PhaseState::Started),
            job("disk-vda"),
            phase(Phase::Copy, PhaseState::Started),
            report("disk-vda", JobStatus::Succeeded),
            phase(Phase::Cutover, PhaseState::Started),
            report("domain", JobStatus::Failed),
        ]);
        let d = |k| ("domain".to_string(), k);
        assert_eq!(
            got,
            vec![
                d("job.started"),
                d("job.phase"),
                d("job.phase"),
                d("job.failed")
            ]
        );
    }

    #[test]
    fn jobs_in_sequence_on_one_stream_are_each_notified_under_their_own_id() {
        let got = names(&[
            job("a"),
            report("a", JobStatus::Succeeded),
            job("b"),
            phase(Phase::Copy, PhaseState::Started),
            report("b", JobStatus::Cancelled),
        ]);
        assert_eq!(
            got,
            vec![
                ("a".to_string(), "job.started"),
                ("a".to_string(), "job.succeeded"),
                ("b".to_string(), "job.started"),
                ("b".to_string(), "job.phase"),
                ("b".to_string(), "job.cancelled"),
            ]
        );
    }

    #[test]
    fn phases_before_any_job_event_belong_to_the_callers_job() {
        assert_eq!(
            names(&[phase(Phase::Copy, PhaseState::Started)]),
            vec![("caller".to_string(), "job.phase")]
        );
    }

    #[test]
    fn event_names_round_trip_through_serde() {
        for k in EventKind::ALL {
            let s = serde_json::to_string(&k).unwrap();
            assert_eq!(s, format!("\"{}\"", k.as_str()));
            assert_eq!(serde_json::from_str::<EventKind>(&s).unwrap(), k);
        }
    }
}
