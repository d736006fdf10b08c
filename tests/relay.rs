//! End to end: the `$TTMS` relay with the real binary and real sockets.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{wait_for, Options, TestServer};
use serde_json::Value;

fn xor(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |a, b| a ^ b)
}

fn frame(addr: u32, cmd: u8, body: &[u8]) -> Vec<u8> {
    let len = 13 + body.len();
    let mut f = b"$TTMS".to_vec();
    f.extend_from_slice(&(len as u16).to_be_bytes());
    f.extend_from_slice(&addr.to_be_bytes());
    f.push(cmd);
    f.extend_from_slice(body);
    f.push(xor(&f));
    f
}

fn heartbeat(ccid: u32) -> Vec<u8> {
    frame(ccid, 0x01, &[])
}

fn data(target: u32, body: &[u8]) -> Vec<u8> {
    frame(target, 0xAA, body)
}

fn connect(server: &TestServer) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", server.ttms)).expect("connect ttms");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// A parsed frame from the server.
#[derive(Debug, Clone, PartialEq)]
struct Got {
    header: Vec<u8>,
    addr: u32,
    cmd: u8,
    body: Vec<u8>,
}

/// Reads one whole frame, checking its length and checksum.
fn read_frame(s: &mut TcpStream) -> Got {
    let mut head = [0u8; 7];
    s.read_exact(&mut head).expect("frame header");
    let len = u16::from_be_bytes([head[5], head[6]]) as usize;
    assert!(len >= 13, "bad length {len}");
    let mut rest = vec![0u8; len - 7];
    s.read_exact(&mut rest).expect("frame rest");
    let mut all = head.to_vec();
    all.extend_from_slice(&rest);
    assert_eq!(
        xor(&all[..len - 1]),
        all[len - 1],
        "checksum of {:02X?}",
        all
    );
    Got {
        header: all[..5].to_vec(),
        addr: u32::from_be_bytes([all[7], all[8], all[9], all[10]]),
        cmd: all[11],
        body: all[12..len - 1].to_vec(),
    }
}

/// Sends a heartbeat and reads its answer.
fn register(s: &mut TcpStream, ccid: u32) -> Got {
    s.write_all(&heartbeat(ccid)).unwrap();
    let answer = read_frame(s);
    assert_eq!(answer.header, b"$TTMS");
    assert_eq!((answer.addr, answer.cmd), (ccid, 0x01));
    answer
}

/// True when nothing arrives within `wait`.
fn silent(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 1];
    let r = s.read(&mut b);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    match r {
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        Ok(_) => false,
    }
}

/// True once the server has closed the socket.
fn closed(s: &mut TcpStream) -> bool {
    let start = Instant::now();
    let mut b = [0u8; 64];
    while start.elapsed() < Duration::from_secs(10) {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
    false
}

fn waiting(server: &TestServer, target: &str) -> Vec<Value> {
    let (status, body) = server.get(&format!("/api/relay?target={target}"));
    assert_eq!(status, 200, "{body}");
    body.as_array().cloned().unwrap_or_default()
}

fn wait_waiting(server: &TestServer, target: &str, n: usize) -> Vec<Value> {
    wait_for(&format!("{n} frames waiting for {target}"), || {
        let w = waiting(server, target);
        (w.len() == n).then_some(w)
    })
}

#[test]
fn heartbeat_is_answered_with_the_server_time() {
    let server = TestServer::start();
    let mut s = connect(&server);
    let answer = register(&mut s, 0x0102_0A0B);
    assert_eq!(answer.body.len(), 4);
    let t = u32::from_be_bytes([
        answer.body[0],
        answer.body[1],
        answer.body[2],
        answer.body[3],
    ]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (i64::from(t) - now).abs() <= 2,
        "server time {t}, now {now}"
    );
    let device = wait_for("the terminal to be online", || {
        server.device("01020A0B").filter(|d| d["online"] == true)
    });
    assert_eq!(device["protocol"], "ttms");
    // Raw packets of kind relay are stored for it.
    let packets = wait_for("relay packets", || {
        let (_, p) = server.get("/api/devices/01020A0B/packets");
        p.as_array().filter(|a| a.len() >= 2).cloned()
    });
    assert!(packets.iter().all(|p| p["kind"] == "relay"), "{packets:?}");
}

#[test]
fn data_is_relayed_between_online_terminals() {
    let server = TestServer::start();
    let mut a = connect(&server);
    let mut b = connect(&server);
    register(&mut a, 0x1111_1111);
    register(&mut b, 0x2222_2222);
    a.write_all(&data(0x2222_2222, b"hello")).unwrap();
    let got = read_frame(&mut b);
    assert_eq!(got.header, b"$TTMX");
    assert_eq!(got.addr, 0x1111_1111);
    assert_eq!(got.cmd, 0xAA);
    assert_eq!(got.body, b"hello");
    // And back.
    b.write_all(&data(0x1111_1111, b"")).unwrap();
    let back = read_frame(&mut a);
    assert_eq!(
        (back.header.as_slice(), back.addr),
        (&b"$TTMX"[..], 0x2222_2222)
    );
    assert!(waiting(&server, "22222222").is_empty());
}

#[test]
fn frames_for_an_offline_target_survive_a_restart_in_order() {
    let mut server = TestServer::start();
    let mut a = connect(&server);
    register(&mut a, 0xA0A0_0001);
    for i in 0..5u8 {
        a.write_all(&data(0xB0B0_0002, &[b'm', i])).unwrap();
    }
    let w = wait_waiting(&server, "b0b00002", 5);
    assert_eq!(w[0]["target"], "B0B00002");
    assert_eq!(w[0]["sender"], "A0A00001");
    assert!(w[0]["queued_at"].is_string());
    assert!(w[0]["id"].is_i64());
    assert!(w[0]["hex"].as_str().unwrap().starts_with("2454544D58")); // "$TTMX"
    drop(a);
    assert!(server.terminate().success());
    server.restart();
    assert_eq!(waiting(&server, "B0B00002").len(), 5);
    let mut b = connect(&server);
    register(&mut b, 0xB0B0_0002);
    for i in 0..5u8 {
        let got = read_frame(&mut b);
        assert_eq!(got.header, b"$TTMX");
        assert_eq!(got.addr, 0xA0A0_0001);
        assert_eq!(got.body, [b'm', i]);
    }
    wait_waiting(&server, "B0B00002", 0);
    // A second heartbeat delivers nothing twice.
    register(&mut b, 0xB0B0_0002);
    assert!(silent(&mut b, Duration::from_millis(500)));
}

#[test]
fn data_before_a_heartbeat_closes_the_connection() {
    let server = TestServer::start();
    let mut s = connect(&server);
    s.write_all(&data(0x1234_5678, b"x")).unwrap();
    assert!(closed(&mut s), "data before a heartbeat must close");
    let mut g = connect(&server);
    g.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert!(closed(&mut g), "garbage must close");
    // A registered terminal sending garbage is closed too.
    let mut r = connect(&server);
    register(&mut r, 0x0000_0042);
    r.write_all(b"$TTMX\x00\x0d").unwrap();
    assert!(closed(&mut r));
    assert!(waiting(&server, "12345678").is_empty());
}

#[test]
fn glued_split_and_bad_checksum_frames() {
    let server = TestServer::start();
    let mut b = connect(&server);
    register(&mut b, 0x0000_00BB);
    let mut a = connect(&server);
    // Heartbeat, a data frame, a frame with a bad checksum and another data frame in one write.
    let mut glued = heartbeat(0x0000_00AA);
    glued.extend(data(0x0000_00BB, b"one"));
    let mut bad = data(0x0000_00BB, b"bad");
    let last = bad.len() - 1;
    bad[last] ^= 0x55;
    glued.extend(bad);
    glued.extend(data(0x0000_00BB, b"two"));
    a.write_all(&glued).unwrap();
    let answer = read_frame(&mut a);
    assert_eq!(
        (answer.addr, answer.cmd, answer.body.len()),
        (0xAA, 0x01, 4)
    );
    assert_eq!(read_frame(&mut b).body, b"one");
    assert_eq!(read_frame(&mut b).body, b"two");
    // A frame split byte by byte over many writes.
    a.set_nodelay(true).unwrap();
    for byte in data(0x0000_00BB, b"split") {
        a.write_all(&[byte]).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let got = read_frame(&mut b);
    assert_eq!((got.addr, got.body.as_slice()), (0xAA, &b"split"[..]));
    wait_for("the bad checksum to be logged", || {
        server
            .log_text()
            .lines()
            .any(|l| l.contains("device 000000AA") && l.contains("bad checksum"))
            .then_some(())
    });
}

#[test]
fn a_reconnecting_target_gets_its_queue_exactly_once() {
    let server = TestServer::start();
    let mut a = connect(&server);
    register(&mut a, 0x0000_0A0A);
    for i in 0..3u8 {
        a.write_all(&data(0x0000_0C0C, &[i])).unwrap();
    }
    wait_waiting(&server, "00000C0C", 3);
    // First connection: two heartbeats glued (the second arrives while delivery runs).
    let mut c1 = connect(&server);
    let mut two = heartbeat(0x0000_0C0C);
    two.extend(heartbeat(0x0000_0C0C));
    c1.write_all(&two).unwrap();
    let mut answers = 0;
    let mut bodies = Vec::new();
    while answers < 2 || bodies.len() < 3 {
        let f = read_frame(&mut c1);
        match f.cmd {
            0x01 => answers += 1,
            _ => bodies.push(f.body),
        }
    }
    assert_eq!(bodies, [vec![0u8], vec![1], vec![2]]);
    assert!(silent(&mut c1, Duration::from_millis(500)), "duplicates");
    wait_waiting(&server, "00000C0C", 0);
    drop(c1);
    // A new connection of the same terminal: nothing again.
    let mut c2 = connect(&server);
    register(&mut c2, 0x0000_0C0C);
    register(&mut c2, 0x0000_0C0C);
    assert!(silent(&mut c2, Duration::from_millis(500)), "duplicates");
    // Live frames still flow to it.
    a.write_all(&data(0x0000_0C0C, b"live")).unwrap();
    assert_eq!(read_frame(&mut c2).body, b"live");
}

#[test]
fn the_queue_depth_is_capped() {
    let server = TestServer::start_with(Options {
        extra_server_toml: "[relay]\nmax_queue = 2\n".into(),
        ..Options::default()
    });
    let mut a = connect(&server);
    register(&mut a, 0x0000_0001);
    for i in 0..4u8 {
        a.write_all(&data(0x0000_0002, &[i])).unwrap();
    }
    wait_for("the full queue to be logged", || {
        server
            .log_text()
            .contains("device 00000002: relay queue full")
            .then_some(())
    });
    let w = waiting(&server, "00000002");
    assert_eq!(w.len(), 2);
}

#[test]
fn a_new_connection_replaces_the_old_one_and_gets_the_frames() {
    let server = TestServer::start();
    let mut a = connect(&server);
    register(&mut a, 0x0000_D001);
    let mut old = connect(&server);
    register(&mut old, 0x0000_D002);
    let mut new = connect(&server);
    register(&mut new, 0x0000_D002);
    assert!(closed(&mut old), "the older connection must be closed");
    a.write_all(&data(0x0000_D002, b"to the new one")).unwrap();
    let got = read_frame(&mut new);
    assert_eq!(
        (got.addr, got.body.as_slice()),
        (0xD001, &b"to the new one"[..])
    );
    wait_for("the replaced event", || {
        let (_, events) = server.get("/api/events?device=0000D002");
        events
            .as_array()
            .filter(|e| e.iter().any(|e| e["event"] == "replaced"))
            .map(|_| ())
    });
    assert!(waiting(&server, "0000D002").is_empty());
}

/// `dtu-sim --protocol ttms`: simulated terminals register, get heartbeat answers and relay
/// frames around their ring through the real server.
#[test]
fn dtu_sim_terminals_relay_frames_through_the_server() {
    let server = TestServer::start();
    let log = tempfile::NamedTempFile::new().expect("temp file");
    let mut sim = std::process::Command::new(env!("CARGO_BIN_EXE_dtu-sim"))
        .args([
            "--server",
            &format!("127.0.0.1:{}", server.ttms),
            "--protocol",
            "ttms",
            "--count",
            "3",
            "--first-id",
            "4096",
            "--heartbeat",
            "1s",
            "--data-every",
            "200ms",
            "--stats-every",
            "300ms",
        ])
        .env("RUST_LOG", "info")
        .stderr(log.reopen().expect("reopen temp file"))
        .spawn()
        .expect("start dtu-sim");
    for id in ["00001000", "00001001", "00001002"] {
        wait_for(&format!("terminal {id} online"), || {
            server
                .device(id)
                .filter(|d| d["online"] == true && d["protocol"] == "ttms")
        });
    }
    // The simulator's counter lines: "... N/M heartbeats answered, S frames sent, R received, B bad".
    let counts = wait_for("the terminals to receive relayed frames", || {
        let text = std::fs::read_to_string(log.path()).ok()?;
        text.lines().rev().find_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = |w: &str| words.iter().position(|x| x.trim_end_matches(',') == w);
            let received: u64 = words.get(at("received")?.checked_sub(1)?)?.parse().ok()?;
            let bad: u64 = words.get(at("bad")?.checked_sub(1)?)?.parse().ok()?;
            let answered: u64 = words
                .get(at("heartbeats")?.checked_sub(1)?)?
                .split('/')
                .next()?
                .parse()
                .ok()?;
            (received >= 6 && answered >= 3).then_some((received, bad))
        })
    });
    assert_eq!(
        counts.1, 0,
        "the server sent frames the terminals could not parse"
    );
    let _ = sim.kill();
    let _ = sim.wait();
}

/// A target whose connection is reset (RST, not a clean close) while frames are being relayed
/// to it: each frame either fails its write or finds the target offline, and is queued either
/// way — the target gets every one, in order, when it comes back. None is lost in between.
#[test]
fn frames_to_a_target_whose_socket_breaks_are_queued_not_lost() {
    let server = TestServer::start();
    let mut a = connect(&server);
    register(&mut a, 0x0000_0D01);
    let mut b = connect(&server);
    register(&mut b, 0x0000_0D02);
    a.write_all(&data(0x0000_0D02, b"before")).unwrap();
    assert_eq!(read_frame(&mut b).body, b"before");
    // Reset B's connection: linger 0 makes close send RST, so the server's next writes fail.
    let raw = socket2::Socket::from(b);
    raw.set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
    drop(raw);
    for i in 0..20u8 {
        a.write_all(&data(0x0000_0D02, &[i])).unwrap();
    }
    // All 20 end up waiting: none was counted as written to the dead socket.
    wait_waiting(&server, "00000D02", 20);
    let mut b2 = connect(&server);
    b2.write_all(&heartbeat(0x0000_0D02)).unwrap();
    let mut bodies = Vec::new();
    while bodies.len() < 20 {
        let f = read_frame(&mut b2);
        if f.cmd != 0x01 {
            bodies.push(f.body);
        }
    }
    assert_eq!(bodies, (0..20u8).map(|i| vec![i]).collect::<Vec<_>>());
    wait_waiting(&server, "00000D02", 0);
}
