//! End-to-end: `[limits]` refuse sockets at accept (connections in all, per source address,
//! not yet registered), counted in `/metrics`, without disturbing devices already online;
//! and bytes that never make a frame are no sign of life.
//!
//! Clients bind source addresses of their own in 127.0.0.0/8 (all loopback on Linux), so one
//! test can look like several sites.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{wait_for, Options, TestServer};

/// A TCP connection to the framed port from `127.0.0.<last>`.
fn connect_from(server: &TestServer, last: u8) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let local = SocketAddr::from((Ipv4Addr::new(127, 0, 0, last), 0));
    socket.bind(&local.into()).expect("bind a loopback source");
    let server_addr = SocketAddr::from(([127, 0, 0, 1], server.framed));
    socket.connect(&server_addr.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    stream
}

/// Whether the server closed the socket (EOF or reset) within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Registers as framed device `number` (4 bytes, big-endian) and waits until it is online.
fn register(server: &TestServer, stream: &mut TcpStream, number: u32) {
    stream.write_all(&number.to_be_bytes()).expect("register");
    let id = number.to_string();
    wait_for(&format!("{id} online"), || server.online(&id).then_some(()));
}

fn refused(server: &TestServer, reason: &str) -> f64 {
    let text = ureq::get(&server.url("/metrics"))
        .call()
        .expect("metrics")
        .into_string()
        .expect("text");
    let key = format!("dtu_connections_refused_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn sockets_over_a_limit_are_refused_at_accept_and_counted() {
    let server = TestServer::start_with(Options {
        extra_server_toml: "\n[limits]\nmax_connections = 5\nmax_per_address = 3\n\
                            max_unregistered = 2\n"
            .into(),
        ..Options::default()
    });
    // Two devices online from 127.0.0.2.
    let mut d1 = connect_from(&server, 2);
    register(&server, &mut d1, 7001);
    let mut d2 = connect_from(&server, 2);
    register(&server, &mut d2, 7002);
    // A third from that address waits to register; a fourth is one too many for it. Each
    // socket is seen admitted (still open) before the next connects: the two accept loops
    // may otherwise take them in either order.
    let mut u1 = connect_from(&server, 2);
    assert!(!closed_within(&mut u1, Duration::from_millis(500)));
    let mut x = connect_from(&server, 2);
    assert!(closed_within(&mut x, Duration::from_secs(3)), "per address");
    // Another site: one more unregistered fits, then no more until one registers.
    let mut u2 = connect_from(&server, 3);
    assert!(!closed_within(&mut u2, Duration::from_millis(500)));
    let mut y = connect_from(&server, 4);
    assert!(
        closed_within(&mut y, Duration::from_secs(3)),
        "unregistered"
    );
    register(&server, &mut u2, 7003);
    let mut u3 = connect_from(&server, 4);
    assert!(!closed_within(&mut u3, Duration::from_millis(500)));
    // Five open: the sixth is refused whatever its address.
    let mut z = connect_from(&server, 5);
    assert!(closed_within(&mut z, Duration::from_secs(3)), "connections");
    for reason in ["per_address", "unregistered", "connections"] {
        assert_eq!(refused(&server, reason), 1.0, "{reason}");
    }
    // The devices online were not disturbed, and a place freed is a place to take.
    for id in ["7001", "7002", "7003"] {
        assert!(server.online(id), "{id} still online");
    }
    // Two places freed, one of them unregistered: a new device gets in.
    drop((d1, u1));
    wait_for("7001 offline", || (!server.online("7001")).then_some(()));
    // The server learns of the closed unregistered socket when it reads its end.
    let mut again = wait_for("a place for a new device", || {
        let mut s = connect_from(&server, 5);
        (!closed_within(&mut s, Duration::from_millis(300))).then_some(s)
    });
    register(&server, &mut again, 7004);
    let log = server.log_text();
    assert_eq!(
        log.matches("refusing connections from").count(),
        3,
        "one warning per reason: {log}"
    );
    drop((d2, u3, again));
}

#[test]
fn bytes_that_never_make_a_frame_are_no_sign_of_life() {
    let server = TestServer::start_with(Options {
        heartbeat_interval: "1s",
        max_missed: 1,
        ..Options::default()
    });
    let mut trickle = connect_from(&server, 6);
    register(&server, &mut trickle, 7101);
    let mut beating = connect_from(&server, 7);
    register(&server, &mut beating, 7102);
    // A data frame announcing 255 bytes, then a byte every 200 ms: it would take 50 s to
    // complete. The other device heartbeats every 300 ms.
    trickle.write_all(&[0x03, 0xFF]).expect("write");
    let started = Instant::now();
    let mut trickle_closed = None;
    while started.elapsed() < Duration::from_secs(6) {
        if trickle_closed.is_none() && trickle.write_all(&[0x55]).is_err() {
            trickle_closed = Some(started.elapsed());
        }
        let _ = beating.write_all(&[0x02, 0x00]);
        std::thread::sleep(Duration::from_millis(200));
        if trickle_closed.is_none() && !server.online("7101") {
            trickle_closed = Some(started.elapsed());
        }
    }
    let closed_after = trickle_closed.expect("the trickling device was taken offline");
    assert!(
        closed_after < Duration::from_secs(4),
        "offline after {closed_after:?}, limit 1 s"
    );
    assert!(
        server.online("7102"),
        "the heartbeating device stays online"
    );
    let log = server.log_text();
    assert!(
        log.contains("device 7101: silent for"),
        "the reason is logged: {log}"
    );
}
