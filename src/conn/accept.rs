//! Accepting connections where they will live. A listener is one socket per device arbiter,
//! all bound to the same address with `SO_REUSEPORT`: the kernel spreads new connections over
//! them, and each arbiter accepts its own and starts their actors right there. No thread hands
//! sockets to another, and no busy thread (the supervisor's, storage's) stands between a
//! dialling DTU and its actor — in a reconnect storm the accept queues drain as fast as the
//! arbiters can take connections.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::conn::listener::Listener;
use crate::metrics::METRICS;

/// Connections the kernel may hold for one socket before it is accepted (capped by the
/// host's `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// `count` listening sockets sharing `addr` (its port picked once when it is 0).
pub fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let first = listen(addr)?;
    // Port 0 asks for any free port: the others must take the one the first got.
    let addr = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..count.max(1) {
        sockets.push(listen(addr)?);
    }
    Ok(sockets)
}

fn listen(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Accepts on `socket` until `stop` turns true, starting each connection's actor on the
/// current arbiter. `_running` is dropped when the loop ends, so that whoever holds its
/// receiver learns that every loop has stopped accepting.
pub async fn accept_loop(
    socket: std::net::TcpListener,
    listener: Arc<Listener>,
    mut stop: watch::Receiver<bool>,
    _running: mpsc::Sender<()>,
) {
    let socket = match TcpListener::from_std(socket) {
        Ok(s) => s,
        Err(e) => {
            log::error!("listener {}: cannot accept: {e}", listener.name());
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            a = socket.accept() => a,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                log::error!("listener {}: accept failed: {e}", listener.name());
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        METRICS.connections_total.inc();
        if let Err(e) = stream.set_nodelay(true) {
            log::debug!("listener {}: {peer}: set_nodelay: {e}", listener.name());
        }
        listener.start(stream, peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sockets_of_a_listener_share_one_port_and_each_accepts() {
        let sockets = bind("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let port = sockets[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert_eq!(sockets[1].local_addr().unwrap().port(), port);
        // The kernel spreads connections over both: enough of them reach each.
        let clients: Vec<_> = (0..64)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        let mut taken = [0usize; 2];
        for (i, s) in sockets.iter().enumerate() {
            while s.accept().is_ok() {
                taken[i] += 1;
            }
        }
        assert_eq!(taken[0] + taken[1], clients.len());
        assert!(taken[0] > 0 && taken[1] > 0, "{taken:?}");
        // Another listener cannot take a port one already holds (it is not ours to share).
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(bind(plain.local_addr().unwrap(), 1).is_err());
    }
}
