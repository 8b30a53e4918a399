//! A small synchronous QMP client: JSON lines over a Unix socket.
//!
//! Every command carries an `id`; replies with another id (late answers to a command that
//! timed out) are dropped, so a slow QEMU never desynchronises the stream. Events that arrive
//! while waiting for a reply are queued and never cause an error, whatever their name or shape.
//!
//! The peer is not trusted to be QEMU: a line longer than [`MAX_LINE_BYTES`] ends the
//! session instead of growing the buffer, and every wait (greeting, reply, write) has a
//! deadline.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::QmpError;

/// Default timeout for one command (seconds). QEMU's main loop can stall for many seconds
/// when a write-blocking mirror waits on a slow target (case C25), so this is generous.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest QMP message accepted, newline excluded. QEMU's largest replies
/// (`query-named-block-nodes` of a VM with hundreds of nodes) are a few MiB.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// Most events kept queued: beyond it (or beyond [`MAX_QUEUED_EVENT_BYTES`]) the oldest are
/// dropped and counted, so a peer that floods events cannot grow memory while the caller is
/// busy. The live driver drains the queue every poll; QEMU sends a handful of events per job.
pub const MAX_QUEUED_EVENTS: usize = 65_536;

/// Most bytes of queued events, counted as the lines they arrived in.
pub const MAX_QUEUED_EVENT_BYTES: usize = 32 << 20;

/// Bytes of a malformed message quoted in its error.
const QUOTED_BYTES: usize = 120;

/// One asynchronous QMP event, decoded leniently: any event name is accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Event name, e.g. `BLOCK_JOB_READY`.
    pub name: String,
    /// The `data` member (`Value::Null` when absent).
    pub data: Value,
    /// QEMU's timestamp in microseconds since the Unix epoch, when present.
    pub timestamp_us: Option<u64>,
    /// The host instant at which the event was read from the socket.
    pub received: Instant,
    /// The whole message as QEMU sent it.
    pub raw: Value,
}

impl Event {
    /// Decodes an event message; `None` if the message has no string `event` member.
    pub fn from_message(raw: Value, received: Instant) -> Option<Event> {
        let name = raw.get("event")?.as_str()?.to_owned();
        let data = raw.get("data").cloned().unwrap_or(Value::Null);
        let timestamp_us = raw.get("timestamp").and_then(|t| {
            let s = t.get("seconds")?.as_u64()?;
            let us = t.get("microseconds")?.as_u64()?;
            s.checked_mul(1_000_000)?.checked_add(us)
        });
        Some(Event {
            name,
            data,
            timestamp_us,
            received,
            raw,
        })
    }

    /// The `data.id` or `data.device` member (the job id for job events), if any.
    pub fn job_id(&self) -> Option<&str> {
        self.data
            .get("id")
            .or_else(|| self.data.get("device"))
            .and_then(Value::as_str)
    }
}

/// A connected QMP session in command mode.
#[derive(Debug)]
pub struct Qmp {
    stream: UnixStream,
    buf: Vec<u8>,
    /// Bytes at the start of `buf` already known to hold no newline.
    scanned: usize,
    /// Queued events with the length of the line each arrived in.
    events: VecDeque<(Event, usize)>,
    /// Sum of the line lengths in `events`.
    queued_bytes: usize,
    /// Length of the line [`Qmp::read_message`] returned last.
    last_line_len: usize,
    /// Events queued since connecting (dropped ones included).
    events_received: u64,
    /// Events dropped from the front of a full queue.
    events_dropped: u64,
    next_id: u64,
    timeout: Duration,
    greeting: Value,
}

impl Qmp {
    /// Connects to the QMP socket at `path`, retrying for up to `connect_timeout` while the
    /// socket does not exist yet, reads the greeting and negotiates capabilities (replies
    /// waited for [`DEFAULT_COMMAND_TIMEOUT`]).
    pub fn connect(path: &Path, connect_timeout: Duration) -> Result<Qmp, QmpError> {
        Qmp::connect_with_timeout(path, connect_timeout, DEFAULT_COMMAND_TIMEOUT)
    }

    /// [`Qmp::connect`] with the per-command reply timeout (see [`Qmp::set_timeout`]) in
    /// force from `qmp_capabilities` on.
    pub fn connect_with_timeout(
        path: &Path,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + connect_timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e)
                    if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused)
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(source) => {
                    return Err(QmpError::Connect {
                        path: path.to_owned(),
                        source,
                    });
                }
            }
        };
        let mut qmp = Qmp {
            stream,
            buf: Vec::new(),
            scanned: 0,
            events: VecDeque::new(),
            queued_bytes: 0,
            last_line_len: 0,
            events_received: 0,
            events_dropped: 0,
            next_id: 1,
            timeout: DEFAULT_COMMAND_TIMEOUT,
            greeting: Value::Null,
        };
        qmp.set_timeout(command_timeout);
        let waited = connect_timeout.max(Duration::from_secs(5));
        let until = Instant::now() + waited;
        loop {
            match qmp.read_message(until) {
                Ok(Some(m)) if m.get("QMP").is_some() => {
                    qmp.greeting = m;
                    break;
                }
                Ok(Some(m)) if m.get("event").is_some() => qmp.queue_if_event(m),
                Ok(Some(m)) => {
                    return Err(QmpError::Protocol(format!(
                        "expected the QMP greeting from {}, got {}",
                        path.display(),
                        quote(m.to_string().as_bytes())
                    )))
                }
                Ok(None) => {
                    return Err(QmpError::NoGreeting {
                        path: path.to_owned(),
                        waited,
                    })
                }
                Err(QmpError::Closed) => {
                    return Err(QmpError::ClosedBeforeGreeting {
                        path: path.to_owned(),
                        partial: quote(&qmp.buf),
                    })
                }
                Err(e) => return Err(e),
            }
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// The greeting QEMU sent (contains the version and capabilities).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Sets the per-command reply timeout (values under 1 s are raised to 1 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout.max(Duration::from_secs(1));
    }

    /// The per-command reply timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `command` with optional `arguments` and returns its `return` value.
    /// A QEMU error reply becomes [`QmpError::Command`]; events read meanwhile are queued.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = serde_json::to_vec(&msg).map_err(|e| QmpError::Protocol(e.to_string()))?;
        line.push(b'\n');
        tracing::trace!(%msg, "qmp send");
        // A peer that stops reading must not block us past the reply timeout either.
        self.stream.set_write_timeout(Some(self.timeout))?;
        self.stream.write_all(&line).map_err(|e| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => QmpError::Timeout {
                command: command.to_owned(),
                timeout: self.timeout,
            },
            _ => e.into(),
        })?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let Some(m) = self.read_message(deadline)? else {
                return Err(QmpError::Timeout {
                    command: command.to_owned(),
                    timeout: self.timeout,
                });
            };
            if m.get("event").is_some() {
                self.queue_if_event(m);
                continue;
            }
            // Never take another command's answer for this one: a reply with another id
            // (or none) is a late answer to a command that timed out, or garbage.
            if m.get("id").and_then(Value::as_u64) != Some(id) {
                tracing::debug!(%m, "dropping QMP reply to an earlier command");
                continue;
            }
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                return Err(QmpError::Command {
                    command: command.to_owned(),
                    class: s("class"),
                    desc: s("desc"),
                });
            }
            return Err(QmpError::Protocol(format!(
                "reply to {command} without return or error: {}",
                quote(m.to_string().as_bytes())
            )));
        }
    }

    /// [`Qmp::execute`] with a JSON object of arguments.
    pub fn call(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        self.execute(command, Some(arguments))
    }

    /// Reads from the socket for up to `timeout`, queueing every event that arrives; returns
    /// as soon as at least one new event was queued (or the timeout expired).
    pub fn pump(&mut self, timeout: Duration) -> Result<(), QmpError> {
        let deadline = Instant::now() + timeout;
        let before = self.events_received;
        while self.events_received == before {
            match self.read_message(deadline)? {
                Some(m) => self.queue_if_event(m),
                None => break,
            }
        }
        Ok(())
    }

    /// Removes and returns every queued event, oldest first.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.queued_bytes = 0;
        self.events.drain(..).map(|(e, _)| e).collect()
    }

    /// Waits up to `timeout` for a queued or new event matching `pred`, removes and returns it.
    /// Other events stay queued.
    pub fn wait_event(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Result<Option<Event>, QmpError> {
        let deadline = Instant::now() + timeout;
        let mut scanned = 0;
        loop {
            if let Some(i) = self.events.iter().skip(scanned).position(|(e, _)| pred(e)) {
                return Ok(self.events.remove(scanned + i).map(|(e, len)| {
                    self.queued_bytes -= len;
                    e
                }));
            }
            scanned = self.events.len();
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let dropped = self.events_dropped;
            self.pump(deadline - now)?;
            // Events dropped from the front shift the ones not yet scanned.
            let shift = usize::try_from(self.events_dropped - dropped).unwrap_or(usize::MAX);
            scanned = scanned.saturating_sub(shift);
        }
    }

    /// Events dropped because [`MAX_QUEUED_EVENTS`] were already queued.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
    }

    fn queue_if_event(&mut self, m: Value) {
        match Event::from_message(m, Instant::now()) {
            Some(e) => {
                tracing::debug!(event = %e.name, data = %e.data, "qmp event");
                let len = self.last_line_len;
                while self.events.len() >= MAX_QUEUED_EVENTS
                    || (!self.events.is_empty() && self.queued_bytes + len > MAX_QUEUED_EVENT_BYTES)
                {
                    if self.events_dropped == 0 {
                        tracing::warn!("too many QMP events queued: dropping the oldest");
                    }
                    if let Some((_, old)) = self.events.pop_front() {
                        self.queued_bytes -= old;
                    }
                    self.events_dropped += 1;
                }
                self.events.push_back((e, len));
                self.queued_bytes += len;
                self.events_received += 1;
            }
            None => tracing::debug!("ignoring unexpected QMP message"),
        }
    }

    /// Next complete JSON message, or `None` when `deadline` passes first.
    ///
    /// # Errors
    /// [`QmpError::LineTooLong`] when [`MAX_LINE_BYTES`] arrive without a newline (the
    /// buffer never grows past that), [`QmpError::Protocol`] for a line that is not JSON,
    /// [`QmpError::Closed`] at end of stream.
    fn read_message(&mut self, deadline: Instant) -> Result<Option<Value>, QmpError> {
        loop {
            if let Some(nl) = self.next_newline() {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                self.scanned = 0;
                let text = String::from_utf8_lossy(&line);
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                tracing::trace!(msg = %text, "qmp recv");
                self.last_line_len = line.len();
                return serde_json::from_str(text)
                    .map(Some)
                    .map_err(|e| QmpError::Protocol(format!("{e} in {}", quote(text.as_bytes()))));
            }
            if self.buf.len() > MAX_LINE_BYTES {
                return Err(QmpError::LineTooLong {
                    limit: MAX_LINE_BYTES,
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wait = (deadline - now).max(Duration::from_millis(1));
            self.stream.set_read_timeout(Some(wait))?;
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(QmpError::Closed),
                Ok(n) => self.append(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Index of the first newline in `buf`, scanning only bytes not scanned before (a long
    /// line arriving in small reads stays linear).
    fn next_newline(&mut self) -> Option<usize> {
        let found = self.buf[self.scanned..].iter().position(|&b| b == b'\n');
        match found {
            Some(i) => Some(self.scanned + i),
            None => {
                self.scanned = self.buf.len();
                None
            }
        }
    }

    /// Appends bytes read, growing the buffer by doubling but never beyond one maximal
    /// line and one read.
    fn append(&mut self, bytes: &[u8]) {
        let needed = self.buf.len() + bytes.len();
        if needed > self.buf.capacity() {
            let cap = (self.buf.capacity() * 2)
                .min(MAX_LINE_BYTES + 65536)
                .max(needed);
            self.buf.reserve_exact(cap - self.buf.len());
        }
        self.buf.extend_from_slice(bytes);
    }
}

/// The first [`QUOTED_BYTES`] of a message for an error, escaped so that it stays on one
/// line whatever the peer sent.
fn quote(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(QUOTED_BYTES)];
    let text = String::from_utf8_lossy(head);
    let more = if bytes.len() > QUOTED_BYTES {
        format!("… ({} bytes)", bytes.len())
    } else {
        String::new()
    };
    format!("{:?}{more}", text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_event_is_kept_raw() {
        let raw = json!({"event": "SOMETHING_NEW_IN_QEMU_11", "data": {"x": [1, 2]},
                         "timestamp": {"seconds": 2, "microseconds": 5}});
        let e = Event::from_message(raw.clone(), Instant::now()).expect("event");
        assert_eq!(e.name, "SOMETHING_NEW_IN_QEMU_11");
        assert_eq!(e.timestamp_us, Some(2_000_005));
        assert_eq!(e.raw, raw);
        assert_eq!(e.job_id(), None);
    }

    #[test]
    fn event_without_data_or_timestamp_decodes() {
        let e = Event::from_message(json!({"event": "STOP"}), Instant::now()).expect("event");
        assert_eq!(e.data, Value::Null);
        assert_eq!(e.timestamp_us, None);
    }

    #[test]
    fn non_event_message_is_not_an_event() {
        assert!(Event::from_message(json!({"return": {}}), Instant::now()).is_none());
        assert!(Event::from_message(json!({"event": 5}), Instant::now()).is_none());
    }

    #[test]
    fn job_event_names_its_job() {
        let e = Event::from_message(
            json!({"event": "BLOCK_JOB_READY", "data": {"device": "vmshift-0", "type": "mirror"}}),
            Instant::now(),
        )
        .expect("event");
        assert_eq!(e.job_id(), Some("vmshift-0"));
    }
}
