//! A small HTTP/1.1 webhook receiver on loopback: std TcpListener, one thread per connection,
//! keep-alive, Content-Length bodies. It records every request and answers as told.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// One request as received; header names lowercased.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("body is JSON")
    }

    /// The envelopes of the body: the one object, or the elements of a batch array.
    pub fn envelopes(&self) -> Vec<Value> {
        match self.json() {
            Value::Array(items) => items,
            one => vec![one],
        }
    }

    /// Whether `X-DTU-Signature` is the HMAC-SHA256 of the body under `secret`, verified here
    /// independently of the server's code.
    pub fn signed_with(&self, secret: &str) -> bool {
        let Some(sig) = self.header("x-dtu-signature") else {
            return false;
        };
        let Some(hex_sig) = sig.strip_prefix("sha256=") else {
            return false;
        };
        let Ok(bytes) = hex::decode(hex_sig) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
        mac.update(&self.body);
        mac.verify_slice(&bytes).is_ok()
    }
}

struct Shared {
    received: Mutex<Vec<Received>>,
    status: AtomicU16,
    /// Milliseconds to wait before answering.
    delay_ms: AtomicU64,
    in_flight: AtomicUsize,
}

pub struct Receiver {
    pub port: u16,
    shared: Arc<Shared>,
}

impl Receiver {
    /// Starts a receiver answering `status` (after `delay`).
    pub fn start(status: u16, delay: Duration) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let port = listener.local_addr().expect("addr").port();
        let shared = Arc::new(Shared {
            received: Mutex::new(Vec::new()),
            status: AtomicU16::new(status),
            delay_ms: AtomicU64::new(delay.as_millis() as u64),
            in_flight: AtomicUsize::new(0),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        Receiver { port, shared }
    }

    pub fn ok() -> Receiver {
        Self::start(200, Duration::ZERO)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().expect("lock").clone()
    }

    pub fn count(&self) -> usize {
        self.shared.received.lock().expect("lock").len()
    }

    /// Requests being answered (waiting out the delay) right now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    pub fn set_status(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }

    /// Every envelope received so far, with the request that carried it.
    pub fn envelopes(&self) -> Vec<(Received, Value)> {
        self.received()
            .into_iter()
            .flat_map(|r| {
                r.envelopes()
                    .into_iter()
                    .map(move |e| (r.clone(), e))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

fn serve(conn: TcpStream, s: &Shared) {
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            match reader.read_line(&mut h) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
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
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        s.received.lock().expect("lock").push(Received {
            path,
            headers,
            body,
        });
        s.in_flight.fetch_add(1, Ordering::SeqCst);
        let delay = s.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        s.in_flight.fetch_sub(1, Ordering::SeqCst);
        let status = s.status.load(Ordering::SeqCst);
        let answer = format!("HTTP/1.1 {status} Whatever\r\nContent-Length: 2\r\n\r\nok");
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}
