//! A QMP peer that answers garbage (issue #18): a fake server on a Unix socket, one
//! misbehaviour per test. The client must end each with one clear line, never panic, never
//! wait past its timeout, and never grow its buffer past one maximal line.

use serde_json::{json, Value};
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use vmshift_qmp::client::{MAX_LINE_BYTES, MAX_QUEUED_EVENTS, MAX_QUEUED_EVENT_BYTES};
use vmshift_qmp::{Qmp, QmpError};

/// Records the largest single allocation: the 64 MiB line must not be buffered.
struct LargestAlloc;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only records the size asked for.
unsafe impl GlobalAlloc for LargestAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller upholds alloc's contract; forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (that is, from System) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAlloc = LargestAlloc;

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}"#;

/// The command timeout the tests give the client.
const TIMEOUT: Duration = Duration::from_secs(1);

/// The fake server's side of one connection.
struct Peer {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Peer {
    /// Sends `text` as it is (add the newline yourself); errors are ignored: the client may
    /// have hung up, which is what some tests want.
    fn send(&mut self, text: &str) {
        let _ = self.writer.write_all(text.as_bytes());
    }

    /// The next command the client sent, or `None` when it hung up.
    fn command(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => serde_json::from_str(&line).ok(),
        }
    }

    /// Greets, answers `qmp_capabilities`, and returns the id of the next command.
    fn handshake_then_next_id(&mut self) -> Option<Value> {
        self.send(&format!("{GREETING}\n"));
        let caps = self.command()?;
        self.send(&format!("{}\n", json!({"return": {}, "id": caps["id"]})));
        Some(self.command()?["id"].clone())
    }

    /// Reads until the client hangs up (a server that never answers).
    fn wait_for_hangup(&mut self) {
        while self.command().is_some() {}
    }
}

/// Serves one connection on a fresh socket with `script` on its own thread.
fn serve(script: impl FnOnce(Peer) + Send + 'static) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        if let Ok((stream, _)) = listener.accept() {
            let writer = stream.try_clone().unwrap();
            script(Peer {
                reader: BufReader::new(stream),
                writer,
            });
        }
    });
    (dir, path)
}

/// Runs `f` on its own thread; panics when it takes longer than `limit` (a hang).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("the client hung for more than {limit:?}"))
}

/// Connects with the short test timeout and runs `query-status`.
fn connect_and_query(path: PathBuf) -> Result<(Value, Qmp), QmpError> {
    connect_and_query_within(path, TIMEOUT)
}

/// [`connect_and_query`] with another command timeout (floods take a while to read in a
/// debug build, and their reading counts against the command's timeout).
fn connect_and_query_within(path: PathBuf, timeout: Duration) -> Result<(Value, Qmp), QmpError> {
    let mut q = Qmp::connect_with_timeout(&path, Duration::from_secs(2), timeout)?;
    let r = q.execute("query-status", None)?;
    Ok((r, q))
}

/// The error's message, asserted to be one line.
fn one_line(e: &QmpError) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n') && !s.is_empty(), "not one line: {s:?}");
    s
}

#[test]
fn a_greeting_cut_short_by_eof_is_a_clear_error() {
    let (_dir, path) = serve(|mut peer| {
        peer.send(r#"{"QMP": {"version": {"qemu""#);
    });
    let err = within(Duration::from_secs(5), move || connect_and_query(path))
        .map(|_| ())
        .unwrap_err();
    let line = one_line(&err);
    assert!(
        matches!(err, QmpError::ClosedBeforeGreeting { .. }),
        "{line}"
    );
    assert!(
        line.contains("closed the connection before a complete QMP greeting"),
        "{line}"
    );
    assert!(
        line.contains(r#"{\"QMP\""#),
        "the partial greeting is quoted: {line}"
    );
}

#[test]
fn a_64_mib_reply_without_newline_fails_at_the_line_limit_without_buffering_it() {
    let (_dir, path) = serve(|mut peer| {
        peer.send(&format!("{GREETING}\n"));
        let _ = peer.command();
        let mib = vec![b'a'; 1 << 20];
        for _ in 0..64 {
            if peer.writer.write_all(&mib).is_err() {
                break; // the client gave up, as it should
            }
        }
    });
    let err = within(Duration::from_secs(20), move || connect_and_query(path))
        .map(|_| ())
        .unwrap_err();
    let line = one_line(&err);
    assert!(matches!(err, QmpError::LineTooLong { .. }), "{line}");
    assert!(
        line.contains("longer than 16 MiB without a newline"),
        "{line}"
    );
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest <= MAX_LINE_BYTES + (1 << 20),
        "the client allocated {largest} bytes for one line"
    );
}

#[test]
fn a_reply_that_is_not_json_is_a_clear_error() {
    let (_dir, path) = serve(|mut peer| {
        if peer.handshake_then_next_id().is_some() {
            peer.send("{\"return\": {}, \"id\": \u{1}garbage\r\n");
            peer.wait_for_hangup();
        }
    });
    let err = within(Duration::from_secs(5), move || connect_and_query(path))
        .map(|_| ())
        .unwrap_err();
    let line = one_line(&err);
    assert!(matches!(err, QmpError::Protocol(_)), "{line}");
    assert!(line.starts_with("malformed QMP message: "), "{line}");
    assert!(
        line.contains(r#"\u{1}garbage"#),
        "the line is quoted, escaped: {line}"
    );
}

#[test]
fn unknown_events_before_the_reply_are_queued_and_the_reply_is_returned() {
    let (_dir, path) = serve(|mut peer| {
        let Some(id) = peer.handshake_then_next_id() else {
            return;
        };
        peer.send("{\"event\": \"FROM_QEMU_42\", \"data\": [1, 2, 3]}\n");
        peer.send("{\"event\": \"STOP\", \"timestamp\": \"not a time\"}\n");
        peer.send("{\"event\": 5}\n"); // not an event: ignored
        peer.send("\n");
        peer.send(&format!(
            "{}\n",
            json!({"return": {"status": "running"}, "id": id})
        ));
        peer.wait_for_hangup();
    });
    let (r, mut q) = within(Duration::from_secs(5), move || connect_and_query(path)).unwrap();
    assert_eq!(r, json!({"status": "running"}));
    let names: Vec<String> = q.take_events().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["FROM_QEMU_42", "STOP"]);
}

#[test]
fn a_reply_with_another_id_is_never_taken_for_the_answer() {
    let (_dir, path) = serve(|mut peer| {
        let Some(id) = peer.handshake_then_next_id() else {
            return;
        };
        let other = id.as_u64().unwrap() + 100;
        peer.send(&format!(
            "{}\n",
            json!({"return": {"wrong": true}, "id": other})
        ));
        peer.send(&format!("{}\n", json!({"return": {"no id": true}})));
        peer.send(&format!(
            "{}\n",
            json!({"return": {"right": true}, "id": id})
        ));
        peer.wait_for_hangup();
    });
    let (r, _q) = within(Duration::from_secs(5), move || connect_and_query(path)).unwrap();
    assert_eq!(r, json!({"right": true}));
}

#[test]
fn only_replies_with_other_ids_end_in_the_timeout_not_a_wrong_result() {
    let (_dir, path) = serve(|mut peer| {
        let Some(id) = peer.handshake_then_next_id() else {
            return;
        };
        let other = id.as_u64().unwrap() + 1;
        peer.send(&format!(
            "{}\n",
            json!({"return": {"wrong": true}, "id": other})
        ));
        peer.wait_for_hangup();
    });
    let err = within(Duration::from_secs(5), move || connect_and_query(path))
        .map(|_| ())
        .unwrap_err();
    let line = one_line(&err);
    assert!(matches!(err, QmpError::Timeout { .. }), "{line}");
}

#[test]
fn a_command_never_answered_fails_after_the_command_timeout() {
    let (_dir, path) = serve(|mut peer| {
        if peer.handshake_then_next_id().is_some() {
            peer.wait_for_hangup();
        }
    });
    let started = Instant::now();
    let err = within(Duration::from_secs(5), move || connect_and_query(path))
        .map(|_| ())
        .unwrap_err();
    let took = started.elapsed();
    let line = one_line(&err);
    assert_eq!(
        line,
        "no reply to query-status within 1s; QEMU may be busy or hung"
    );
    assert!(took >= TIMEOUT && took < TIMEOUT * 3, "took {took:?}");
}

#[test]
fn capabilities_never_answered_fail_after_the_command_timeout_not_the_default() {
    let (_dir, path) = serve(|mut peer| {
        peer.send(&format!("{GREETING}\n"));
        peer.wait_for_hangup();
    });
    let started = Instant::now();
    let err = within(Duration::from_secs(5), move || connect_and_query(path))
        .map(|_| ())
        .unwrap_err();
    let line = one_line(&err);
    assert!(
        line.starts_with("no reply to qmp_capabilities within 1s"),
        "{line}"
    );
    assert!(started.elapsed() < TIMEOUT * 3);
}

#[test]
fn a_peer_that_answers_with_something_else_than_a_greeting_is_refused() {
    let (_dir, path) = serve(|mut peer| {
        peer.send("{\"hello\": \"i am not qemu\"}\n");
        peer.wait_for_hangup();
    });
    let err = within(Duration::from_secs(5), move || connect_and_query(path))
        .map(|_| ())
        .unwrap_err();
    let line = one_line(&err);
    assert!(line.contains("expected the QMP greeting"), "{line}");
}

#[test]
fn a_flood_of_events_keeps_the_queue_bounded_and_the_reply_arrives() {
    let flood = MAX_QUEUED_EVENTS + 1000;
    let (_dir, path) = serve(move |mut peer| {
        let Some(id) = peer.handshake_then_next_id() else {
            return;
        };
        let mut batch = String::new();
        for i in 0..flood {
            batch.push_str(&format!("{}\n", json!({"event": "SPAM", "data": {"n": i}})));
        }
        peer.send(&batch);
        peer.send(&format!("{}\n", json!({"return": {}, "id": id})));
        peer.wait_for_hangup();
    });
    let (r, mut q) = within(Duration::from_secs(30), move || {
        connect_and_query_within(path, Duration::from_secs(20))
    })
    .unwrap();
    assert_eq!(r, json!({}));
    assert_eq!(q.events_dropped(), 1000);
    let events = q.take_events();
    assert_eq!(events.len(), MAX_QUEUED_EVENTS);
    // The oldest went: the queue holds the latest events.
    assert_eq!(events[0].data["n"], 1000);
}

#[test]
fn large_events_are_dropped_oldest_first_beyond_the_byte_budget() {
    // 48 events of 1 MiB each: only the latest 32 MiB (less one line) stay queued.
    let (_dir, path) = serve(move |mut peer| {
        let Some(id) = peer.handshake_then_next_id() else {
            return;
        };
        let pad = "x".repeat(1 << 20);
        for i in 0..48 {
            peer.send(&format!(
                "{}\n",
                json!({"event": "BIG", "data": {"n": i, "pad": pad}})
            ));
        }
        peer.send(&format!("{}\n", json!({"return": {}, "id": id})));
        peer.wait_for_hangup();
    });
    let (_, mut q) = within(Duration::from_secs(30), move || {
        connect_and_query_within(path, Duration::from_secs(20))
    })
    .unwrap();
    let events = q.take_events();
    let kept = events.len();
    assert!(
        kept * (1 << 20) <= MAX_QUEUED_EVENT_BYTES && kept >= 30,
        "{kept} kept"
    );
    assert_eq!(q.events_dropped(), 48 - kept as u64);
    assert_eq!(events.last().unwrap().data["n"], 47);
}
