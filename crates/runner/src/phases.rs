//! Phase bookkeeping shared by every kind of job: each phase change is an event, a journal
//! row (so `vmshift status` shows how far a job got) and, once ended, a report timing.

use crate::handle::Emitter;
use crate::journal::JournalLink;
pub use crate::state::now_rfc3339;
use std::time::Instant;
use vmshift_core::report::PhaseTiming;
use vmshift_core::Phase;

/// The phases of one run of a job.
pub(crate) struct PhaseClock {
    /// Phases ended so far, in order.
    pub done: Vec<PhaseTiming>,
    current: Option<(Phase, String, Instant)>,
    /// The job's journal, once it is recorded there.
    pub link: Option<JournalLink>,
    em: Emitter,
}

impl PhaseClock {
    /// A clock that reports to `em`.
    pub fn new(em: &Emitter) -> Self {
        PhaseClock {
            done: Vec::new(),
            current: None,
            link: None,
            em: em.clone(),
        }
    }

    /// Ends the current phase and starts `p` (nothing when `p` is already current).
    pub fn enter(&mut self, p: Phase) {
        if self.current.as_ref().is_some_and(|c| c.0 == p) {
            return;
        }
        self.end();
        self.em.phase(p);
        if let Some(l) = &self.link {
            l.note(|j, id| j.phase_started(id, l.run, p.as_str()));
        }
        self.current = Some((p, now_rfc3339(), Instant::now()));
    }

    /// Ends the current phase, if any.
    pub fn end(&mut self) {
        if let Some((name, started_at, t)) = self.current.take() {
            let duration_ms = vmshift_core::millis(t.elapsed());
            self.em.phase_ended(name, duration_ms);
            self.done.push(PhaseTiming {
                name,
                started_at,
                duration_ms,
            });
        }
    }

    /// The phase running now (check before the first).
    pub fn current(&self) -> Phase {
        self.current.as_ref().map_or(Phase::Check, |c| c.0)
    }
}
