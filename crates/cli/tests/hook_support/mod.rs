//! A real HTTP/1.1 listener standing in for a webhook receiver (notification tests).
#![allow(dead_code, missing_docs)]

use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request the listener got.
#[derive(Debug, Clone)]
pub struct Request {
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// How the listener answers.
#[derive(Clone, Copy)]
pub enum Answer {
    /// These statuses to the first requests, then 200.
    Statuses(&'static [u16]),
    /// Reads the request and never answers.
    Never,
}

/// A real HTTP/1.1 listener on 127.0.0.1 (keep-alive, Content-Length bodies).
pub struct Hook {
    pub url: String,
    got: Arc<Mutex<Vec<Request>>>,
}

impl Hook {
    pub fn start(answer: Answer) -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hooks/vmshift", listener.local_addr().unwrap());
        let got: Arc<Mutex<Vec<Request>>> = Arc::default();
        let seen = Arc::new(AtomicUsize::new(0));
        let g = got.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                let (g, seen) = (g.clone(), seen.clone());
                std::thread::spawn(move || serve(conn, answer, &g, &seen));
            }
        });
        Hook { url, got }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.got.lock().unwrap().clone()
    }
}

fn serve(conn: TcpStream, answer: Answer, got: &Mutex<Vec<Request>>, seen: &AtomicUsize) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        got.lock().unwrap().push(Request { headers, body });
        let n = seen.fetch_add(1, Ordering::SeqCst);
        let status = match answer {
            Answer::Never => {
                std::thread::sleep(Duration::from_secs(120));
                return;
            }
            Answer::Statuses(s) => s.get(n).copied().unwrap_or(200),
        };
        let _ = write!(
            w,
            "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
        );
        let _ = w.flush();
    }
}
