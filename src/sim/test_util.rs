//! What the simulator's tests share: a listener standing in for the server and [`Peer`], the
//! server's end of a connection, which reads and writes with the protocol's own server codec.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use crate::protocol::link::{
    DeviceLink, Expect, Heartbeat, IdFormat, IdMatcher, Inbound, LinkCodec, LinkOptions, Outbound,
    Registration, RegistrationMode, Role,
};
use crate::protocol::modbus::Request;
use crate::protocol::{framed, transparent, Protocol, PROTOCOLS};
use crate::sim::SimConfig;

/// Generous deadline for anything the device should do "soon".
pub(super) const DEADLINE: Duration = Duration::from_secs(10);

pub(super) fn framed() -> Protocol {
    Protocol::of(&framed::PROTOCOL)
}

pub(super) fn transparent() -> Protocol {
    Protocol::of(&transparent::PROTOCOL)
}

/// Every protocol whose devices the simulator plays.
pub(super) fn polled() -> Vec<Protocol> {
    let polled: Vec<Protocol> = PROTOCOLS
        .iter()
        .map(|entry| Protocol::of(entry))
        .filter(|p| p.needs_profile())
        .collect();
    assert!(polled.contains(&framed()) && polled.contains(&transparent()));
    polled
}

/// The device side of `protocol` with the default configuration.
pub(super) fn device_link(protocol: Protocol) -> Arc<dyn DeviceLink> {
    let config = SimConfig {
        protocol,
        ..SimConfig::default()
    };
    config.device_link().expect("a polled protocol")
}

pub(super) fn adu(slave: u8, request: &Request) -> Vec<u8> {
    request.encode(slave)
}

pub(super) async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    (l, a)
}

pub(super) fn config(server: SocketAddr, protocol: Protocol) -> SimConfig {
    SimConfig {
        server,
        protocol,
        heartbeat: Duration::from_secs(3600),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        // Long enough that a slow test machine never splits a request in two.
        frame_gap: Duration::from_secs(5),
        ..SimConfig::default()
    }
}

pub(super) async fn accept(l: &TcpListener) -> TcpStream {
    timeout(DEADLINE, l.accept())
        .await
        .expect("device did not connect")
        .expect("accept")
        .0
}

pub(super) async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    timeout(DEADLINE, s.read_exact(&mut buf))
        .await
        .expect("timed out reading")
        .expect("read");
    buf
}

/// The server's end of one simulated device's connection.
pub(super) struct Peer {
    pub(super) stream: TcpStream,
    codec: Box<dyn LinkCodec>,
    buf: BytesMut,
}

impl Peer {
    /// Accepts device `number` of `config`, checks its registration bytes and acknowledges
    /// them (where the protocol acknowledges registrations).
    pub(super) async fn accept(l: &TcpListener, config: &SimConfig, number: u64) -> Peer {
        let link = config.device_link().expect("a polled protocol");
        let registration = link.registration(number).expect("registration");
        let Role::Polled { server, .. } = config.protocol.role() else {
            panic!("{} is not polled", config.protocol);
        };
        // How the server would be configured for these devices: registration packets of
        // this length, the device's heartbeat.
        let options = LinkOptions {
            registration: Some(Registration {
                format: IdFormat::Hex,
                matcher: IdMatcher::Length(registration.len()),
                reply: Vec::new(),
                mode: RegistrationMode::Connect,
            }),
            heartbeat: Some(Heartbeat {
                bytes: link.heartbeat(number),
                reply: Vec::new(),
            }),
        };
        let mut peer = Peer {
            stream: accept(l).await,
            codec: server(&options).expect("server codec"),
            buf: BytesMut::new(),
        };
        match peer.next().await {
            Inbound::Register { raw, .. } => assert_eq!(raw, registration),
            other => panic!("expected the registration, got {other:?}"),
        }
        peer.send(Outbound::RegisterAck).await;
        peer
    }

    /// The next item the device sent.
    pub(super) async fn next(&mut self) -> Inbound {
        loop {
            if let Some(item) = self.codec.decode(&mut self.buf).expect("device bytes") {
                return item;
            }
            let n = timeout(DEADLINE, self.stream.read_buf(&mut self.buf))
                .await
                .expect("timed out reading")
                .expect("read");
            assert!(n > 0, "the device closed the connection");
        }
    }

    pub(super) async fn send(&mut self, item: Outbound) {
        let mut out = BytesMut::new();
        self.codec.encode(item, &mut out).expect("encode");
        self.stream.write_all(&out).await.expect("send");
    }

    /// Tells the codec which answer to look for: the one to `request`.
    pub(super) fn expect(&mut self, request: &[u8]) {
        if let [slave, function, ..] = *request {
            // A test's requests may be any bytes: no length known.
            self.codec.set_expect(Some(Expect::Rtu {
                slave,
                function,
                len: None,
            }));
        }
    }

    /// Sends a request ADU the protocol's way.
    pub(super) async fn request(&mut self, request: &[u8]) {
        self.expect(request);
        self.send(Outbound::Request(Bytes::copy_from_slice(request)))
            .await;
    }

    /// The next item, which must be an answer ADU.
    pub(super) async fn answer(&mut self) -> Vec<u8> {
        match self.next().await {
            Inbound::Answer(adu) => adu.to_vec(),
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    /// Sends a request and reads the answer ADU.
    pub(super) async fn poll(&mut self, request: &[u8]) -> Vec<u8> {
        self.request(request).await;
        self.answer().await
    }
}
