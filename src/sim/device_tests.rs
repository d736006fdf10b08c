//! The simulated DTU on the wire, against a stand-in server that speaks each protocol
//! through the protocol's own server codec ([`Peer`]); the tests that check exact bytes name
//! their protocol.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use proptest::prelude::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

use super::*;
use crate::protocol::link::{FromServer, Inbound, Outbound, RegistrationMode};
use crate::protocol::modbus::rtu::MAX_ADU;
use crate::protocol::modbus::{self, Request, Response};
use crate::protocol::points::{PointType, WordOrder};
use crate::protocol::Protocol;
use crate::sim::test_util::{
    accept, adu, config, device_link, framed, listener, polled, read_n, transparent, Peer, DEADLINE,
};
use crate::sim::PassiveQuery;
use crate::sim::RoundTrips;

/// Start device `id`, accept it and complete registration; returns the server side.
async fn connected(
    protocol: Protocol,
    id: u64,
) -> (Peer, SimHandle, JoinHandle<Result<(), SimError>>) {
    let (l, addr) = listener().await;
    let cfg = config(addr, protocol);
    let (device, handle) = SimDevice::new(id, cfg.clone());
    let task = device.spawn();
    let peer = Peer::accept(&l, &cfg, id).await;
    (peer, handle, task)
}

#[tokio::test]
async fn framed_registration_bytes() {
    let (l, addr) = listener().await;
    let (device, handle) = SimDevice::new(1001, config(addr, framed()));
    assert_eq!(device.registration_id().unwrap(), "1001");
    let task = device.spawn();
    let mut s = accept(&l).await;
    assert_eq!(read_n(&mut s, 4).await, [0x00, 0x00, 0x03, 0xE9]);
    s.write_all(&[1]).await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    while handle.stats().registrations == 0 {
        assert!(Instant::now() < deadline, "registration ack not seen");
        sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(handle.stats().connected, 1);
    handle.stop();
    timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
    assert_eq!(handle.stats().connected, 0);
}

#[tokio::test]
async fn transparent_registration_bytes() {
    let (l, addr) = listener().await;
    let (device, handle) = SimDevice::new(1001, config(addr, transparent()));
    assert_eq!(device.registration_id().unwrap(), "860000000001001");
    let task = device.spawn();
    let mut s = accept(&l).await;
    assert_eq!(read_n(&mut s, 15).await, b"860000000001001");
    handle.stop();
    timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
}

#[test]
fn registration_ids() {
    let device = |protocol, number| {
        let config = SimConfig {
            protocol,
            ..SimConfig::default()
        };
        SimDevice::new(number, config).0
    };
    let id = |protocol, number| device(protocol, number).registration_id().unwrap();
    assert_eq!(id(transparent(), 0), "860000000000000");
    assert_eq!(id(transparent(), 861234567890123), "861234567890123");
    assert_eq!(id(framed(), 7), "7");
    let ttms: Protocol = "ttms".parse().unwrap();
    assert!(matches!(
        device(ttms, 1).registration_id(),
        Err(SimError::NotPolled(p)) if p == ttms
    ));
}

#[tokio::test]
async fn framed_heartbeat_cadence() {
    let (l, addr) = listener().await;
    let mut cfg = config(addr, framed());
    cfg.heartbeat = Duration::from_millis(50);
    let (device, handle) = SimDevice::new(1001, cfg);
    let task = device.spawn();
    let mut s = accept(&l).await;
    read_n(&mut s, 4).await;
    s.write_all(&[1]).await.unwrap();
    for _ in 0..4 {
        assert_eq!(read_n(&mut s, 2).await, [2, 0]);
        s.write_all(&[2]).await.unwrap();
    }
    assert!(handle.stats().heartbeats_sent >= 4);
    handle.stop();
    timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn framed_no_heartbeat_before_registration_ack() {
    let (l, addr) = listener().await;
    let mut cfg = config(addr, framed());
    cfg.heartbeat = Duration::from_millis(20);
    let (device, handle) = SimDevice::new(1001, cfg);
    let task = device.spawn();
    let mut s = accept(&l).await;
    read_n(&mut s, 4).await;
    sleep(Duration::from_millis(200)).await;
    assert_eq!(handle.stats().heartbeats_sent, 0);
    s.write_all(&[1]).await.unwrap();
    assert_eq!(read_n(&mut s, 2).await, [2, 0]);
    handle.stop();
    timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn transparent_heartbeat_cadence() {
    let (l, addr) = listener().await;
    let mut cfg = config(addr, transparent());
    cfg.heartbeat = Duration::from_millis(50);
    let (device, handle) = SimDevice::new(5, cfg);
    let task = device.spawn();
    let mut s = accept(&l).await;
    assert_eq!(read_n(&mut s, 15).await, b"860000000000005");
    for _ in 0..4 {
        assert_eq!(read_n(&mut s, 10).await, b"www.usr.cn");
    }
    handle.stop();
    timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn glued_registration() {
    for protocol in polled() {
        let (l, addr) = listener().await;
        let mut cfg = config(addr, protocol);
        cfg.glue_registration = true;
        let (device, handle) = SimDevice::new(1001, cfg);
        let task = device.spawn();
        let mut s = accept(&l).await;
        let expected = [
            (framed(), &[0, 0, 3, 0xE9, 2, 0][..]),
            (transparent(), b"860000000001001www.usr.cn"),
        ];
        // The exact bytes where this test knows them; any other protocol's own.
        let expected = match expected.iter().find(|(p, _)| *p == protocol) {
            Some((_, bytes)) => bytes.to_vec(),
            None => {
                let link = device_link(protocol);
                [link.registration(1001).unwrap(), link.heartbeat(1001)].concat()
            }
        };
        assert_eq!(read_n(&mut s, expected.len()).await, expected, "{protocol}");
        assert_eq!(handle.stats().heartbeats_sent, 1);
        handle.stop();
        timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
    }
}

#[tokio::test]
async fn fc3_reads_set_value() {
    for protocol in polled() {
        let (mut peer, handle, task) = connected(protocol, 1001).await;
        handle.set_register(2000, 235);
        handle.set_value(2010, PointType::F32, WordOrder::Abcd, 45.5);
        let answer = peer
            .poll(&adu(
                1,
                &Request::ReadHoldingRegisters {
                    start: 2000,
                    count: 12,
                },
            ))
            .await;
        assert!(modbus::rtu::check_crc(&answer));
        assert_eq!(&answer[..3], &[1, 3, 24]);
        assert_eq!(&answer[3..5], &235u16.to_be_bytes());
        assert_eq!(&answer[23..27], &45.5f32.to_be_bytes());
        // FC4 reads the same table.
        let answer = peer
            .poll(&adu(
                1,
                &Request::ReadInputRegisters {
                    start: 2000,
                    count: 1,
                },
            ))
            .await;
        assert_eq!(answer, Response::Registers(vec![235]).encode(1, 4));
        assert_eq!(handle.stats().polls_answered, 2);
        handle.stop();
        timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
    }
}

#[tokio::test]
async fn fc6_write_then_read_back() {
    for protocol in polled() {
        let (mut peer, handle, task) = connected(protocol, 1001).await;
        let write = adu(
            1,
            &Request::WriteSingleRegister {
                address: 2100,
                value: 1,
            },
        );
        // FC6 echoes the request.
        assert_eq!(peer.poll(&write).await, write);
        let answer = peer
            .poll(&adu(
                1,
                &Request::ReadHoldingRegisters {
                    start: 2100,
                    count: 1,
                },
            ))
            .await;
        assert_eq!(answer, Response::Registers(vec![1]).encode(1, 3));
        assert_eq!(handle.register(2100), 1);
        handle.stop();
        timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
    }
}

#[tokio::test]
async fn fc16_write_then_read_back() {
    for protocol in polled() {
        let (mut peer, handle, task) = connected(protocol, 1001).await;
        let values = vec![1, 2, 3, 0xFFFF];
        let answer = peer
            .poll(&adu(
                1,
                &Request::WriteMultipleRegisters {
                    address: 2100,
                    values: values.clone(),
                },
            ))
            .await;
        assert_eq!(
            answer,
            Response::WriteMultiple {
                address: 2100,
                count: 4
            }
            .encode(1, 16)
        );
        let answer = peer
            .poll(&adu(
                1,
                &Request::ReadHoldingRegisters {
                    start: 2100,
                    count: 4,
                },
            ))
            .await;
        assert_eq!(answer, Response::Registers(values).encode(1, 3));
        handle.stop();
        timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
    }
}

#[tokio::test]
async fn fc15_fc5_write_then_fc1_fc2_read_back() {
    for protocol in polled() {
        let (mut peer, handle, task) = connected(protocol, 1001).await;
        let bits = vec![
            true, false, true, true, false, false, true, false, true, true,
        ];
        let answer = peer
            .poll(&adu(
                1,
                &Request::WriteMultipleCoils {
                    address: 10,
                    values: bits.clone(),
                },
            ))
            .await;
        assert_eq!(
            answer,
            Response::WriteMultiple {
                address: 10,
                count: 10
            }
            .encode(1, 15)
        );
        let write = adu(
            1,
            &Request::WriteSingleCoil {
                address: 11,
                value: true,
            },
        );
        assert_eq!(peer.poll(&write).await, write);
        let mut expected = bits.clone();
        expected[1] = true;
        let answer = peer
            .poll(&adu(
                1,
                &Request::ReadCoils {
                    start: 10,
                    count: 10,
                },
            ))
            .await;
        assert_eq!(answer, Response::Bits(expected.clone()).encode(1, 1));
        let answer = peer
            .poll(&adu(
                1,
                &Request::ReadDiscreteInputs {
                    start: 10,
                    count: 10,
                },
            ))
            .await;
        assert_eq!(answer, Response::Bits(expected).encode(1, 2));
        assert!(handle.coil(11));
        handle.stop();
        timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
    }
}

#[tokio::test]
async fn wrong_slave_gets_no_answer() {
    for protocol in polled() {
        let (mut peer, handle, task) = connected(protocol, 1001).await;
        handle.set_register(1, 11);
        handle.set_register(2, 22);
        // The first request is for slave 2; the first answer must be for the second one.
        peer.request(&adu(
            2,
            &Request::ReadHoldingRegisters { start: 1, count: 1 },
        ))
        .await;
        let answer = peer
            .poll(&adu(
                1,
                &Request::ReadHoldingRegisters { start: 2, count: 1 },
            ))
            .await;
        assert_eq!(answer, Response::Registers(vec![22]).encode(1, 3));
        assert_eq!(handle.stats().ignored, 1);
        handle.stop();
        timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
    }
}

#[tokio::test]
async fn bad_crc_gets_no_answer() {
    for protocol in polled() {
        let (mut peer, handle, task) = connected(protocol, 1001).await;
        handle.set_register(1, 11);
        handle.set_register(2, 22);
        let mut bad = adu(1, &Request::ReadHoldingRegisters { start: 1, count: 1 });
        let last = bad.len() - 1;
        bad[last] ^= 0x55;
        peer.request(&bad).await;
        // Let the bad frame arrive on its own before the good one.
        sleep(Duration::from_millis(50)).await;
        let answer = peer
            .poll(&adu(
                1,
                &Request::ReadHoldingRegisters { start: 2, count: 1 },
            ))
            .await;
        assert_eq!(answer, Response::Registers(vec![22]).encode(1, 3));
        // A framed link hands the meter the bad frame; without framing it is never found.
        let framed_link = device_link(protocol).framed();
        assert_eq!(
            handle.stats().malformed,
            u64::from(framed_link),
            "{protocol}"
        );
        handle.stop();
        timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
    }
}

#[tokio::test]
async fn transparent_request_split_across_writes_and_junk_before() {
    let protocol = transparent();
    let (mut peer, handle, task) = connected(protocol, 1001).await;
    handle.set_register(7, 77);
    let request = adu(1, &Request::ReadHoldingRegisters { start: 7, count: 1 });
    // A registration reply glued in front, then the request in two pieces.
    peer.expect(&request);
    peer.stream.write_all(b"OK").await.unwrap();
    peer.stream.write_all(&request[..3]).await.unwrap();
    sleep(Duration::from_millis(30)).await;
    peer.stream.write_all(&request[3..]).await.unwrap();
    assert_eq!(
        peer.answer().await,
        Response::Registers(vec![77]).encode(1, 3)
    );
    handle.stop();
    timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn transparent_prefix_mode_puts_the_registration_before_every_packet() {
    let (l, addr) = listener().await;
    let mut cfg = config(addr, transparent());
    cfg.registration_mode = RegistrationMode::Prefix;
    cfg.heartbeat = Duration::from_millis(100);
    let (device, handle) = SimDevice::new(1001, cfg);
    handle.set_register(7, 77);
    let task = device.spawn();
    let mut s = accept(&l).await;
    // No registration packet of its own: the first heartbeat carries it, at once.
    assert_eq!(read_n(&mut s, 25).await, b"860000000001001www.usr.cn");
    let request = adu(1, &Request::ReadHoldingRegisters { start: 7, count: 1 });
    s.write_all(&request).await.unwrap();
    let answer = Response::Registers(vec![77]).encode(1, 3);
    // Heartbeats may come before the answer; every packet starts with the registration.
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "no answer");
        let head = read_n(&mut s, 15).await;
        assert_eq!(head, b"860000000001001");
        let mut first = read_n(&mut s, 1).await;
        if first == b"w" {
            first.extend(read_n(&mut s, 9).await);
            assert_eq!(first, b"www.usr.cn");
            continue;
        }
        first.extend(read_n(&mut s, answer.len() - 1).await);
        assert_eq!(first, answer);
        break;
    }
    handle.stop();
    timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn exceptions() {
    for protocol in polled() {
        let (mut peer, handle, task) = connected(protocol, 1001).await;
        // count 0 -> illegal data value
        let answer = peer
            .poll(&adu(
                1,
                &Request::ReadHoldingRegisters { start: 0, count: 0 },
            ))
            .await;
        assert_eq!(answer, modbus::rtu::exception_adu(1, 3, 3));
        // past the end of the address space -> illegal data address
        let answer = peer
            .poll(&adu(
                1,
                &Request::ReadHoldingRegisters {
                    start: 65535,
                    count: 2,
                },
            ))
            .await;
        assert_eq!(answer, modbus::rtu::exception_adu(1, 3, 2));
        // unknown function with a valid CRC -> illegal function
        let mut unknown = vec![1, 0x11];
        modbus::rtu::append_crc(&mut unknown);
        assert_eq!(
            peer.poll(&unknown).await,
            modbus::rtu::exception_adu(1, 0x11, 1)
        );
        assert_eq!(handle.stats().exceptions, 3);
        handle.stop();
        timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
    }
}

#[tokio::test]
async fn framed_data_packets_and_acks() {
    let (l, addr) = listener().await;
    let mut cfg = config(addr, framed());
    cfg.data_every = Some(Duration::from_millis(30));
    let (device, handle) = SimDevice::new(1001, cfg);
    let task = device.spawn();
    let mut s = accept(&l).await;
    read_n(&mut s, 4).await;
    s.write_all(&[1]).await.unwrap();
    for seq in 1..=2 {
        let head = read_n(&mut s, 2).await;
        assert_eq!(head[0], 3);
        let body = read_n(&mut s, head[1] as usize).await;
        assert_eq!(body, format!("id=1001 seq={seq}").as_bytes());
        s.write_all(&[3]).await.unwrap();
    }
    let deadline = Instant::now() + DEADLINE;
    while handle.stats().acks < 2 {
        assert!(Instant::now() < deadline, "acks not counted");
        sleep(Duration::from_millis(10)).await;
    }
    handle.stop();
    timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn passive_queries_send_the_meters_answer_up_unasked() {
    let (l, addr) = listener().await;
    let mut cfg = config(addr, framed());
    let request = Request::read(3, 2000, 2).unwrap();
    cfg.passive = Some(PassiveQuery {
        every: Duration::from_millis(30),
        request: request.clone(),
    });
    let (device, handle) = SimDevice::new(1001, cfg);
    handle.set_registers(2000, &[7, 8]);
    let task = device.spawn();
    let mut s = accept(&l).await;
    read_n(&mut s, 4).await;
    s.write_all(&[1]).await.unwrap();
    // Nobody asks; the answer to the DTU's own read comes anyway, framed as an answer.
    let head = read_n(&mut s, 2).await;
    assert_eq!(head[0], 4);
    let answer = read_n(&mut s, head[1] as usize).await;
    assert_eq!(answer, Response::Registers(vec![7, 8]).encode(1, 3));
    assert!(modbus::rtu::parse_response(1, &request, &answer).is_ok());
    let deadline = Instant::now() + DEADLINE;
    while handle.stats().passive_sent < 1 {
        assert!(Instant::now() < deadline, "not counted");
        sleep(Duration::from_millis(10)).await;
    }
    handle.stop();
    timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn spread_sources_bind_one_of_250_loopback_addresses() {
    let (l, addr) = listener().await;
    let cfg = SimConfig {
        spread_sources: true,
        ..config(addr, framed())
    };
    for (number, host) in [(1001, 2), (249, 250), (250, 1)] {
        assert_eq!(
            cfg.source_address(number),
            Some(SocketAddr::from(([127, 0, 0, host], 0)))
        );
    }
    assert_eq!(config(addr, framed()).source_address(1001), None);
    let (device, handle) = SimDevice::new(1001, cfg);
    let task = device.spawn();
    let s = accept(&l).await;
    assert_eq!(s.peer_addr().unwrap().ip(), IpAddr::from([127, 0, 0, 2]));
    handle.stop();
    timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn round_trips_ride_heartbeats_behind_answers() {
    let (l, addr) = listener().await;
    let round_trips = Arc::new(RoundTrips::default());
    let cfg = SimConfig {
        heartbeat: Duration::from_millis(50),
        round_trips: Some(round_trips.clone()),
        ..config(addr, framed())
    };
    let (device, handle) = SimDevice::new(1001, cfg.clone());
    let task = device.spawn();
    let mut peer = Peer::accept(&l, &cfg, 1001).await;
    let request = adu(1, &Request::ReadHoldingRegisters { start: 0, count: 1 });
    // Past the heartbeat's time nothing arrives alone: it waits for the next request.
    sleep(Duration::from_millis(80)).await;
    peer.request(&request).await;
    peer.answer().await;
    assert!(matches!(peer.next().await, Inbound::Heartbeat { .. }));
    assert_eq!(round_trips.count(), 0);
    peer.send(Outbound::HeartbeatAck).await;
    let deadline = Instant::now() + DEADLINE;
    while round_trips.count() == 0 {
        assert!(Instant::now() < deadline, "round trip not recorded");
        sleep(Duration::from_millis(5)).await;
    }
    assert!(round_trips.quantile(0.5).is_some());
    round_trips.clear();
    assert_eq!(round_trips.quantile(0.99), None);
    // Without requests for a whole interval, the heartbeat goes alone.
    assert!(matches!(peer.next().await, Inbound::Heartbeat { .. }));
    handle.stop();
    timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn framed_garbage_from_server_is_survived() {
    let (mut peer, handle, task) = connected(framed(), 1001).await;
    handle.set_register(0, 5);
    peer.stream.write_all(&[0x99, 0x01, 0x02]).await.unwrap();
    sleep(Duration::from_millis(50)).await;
    let answer = peer
        .poll(&adu(
            1,
            &Request::ReadHoldingRegisters { start: 0, count: 1 },
        ))
        .await;
    assert_eq!(answer, Response::Registers(vec![5]).encode(1, 3));
    assert_eq!(handle.stats().protocol_errors, 1);
    handle.stop();
    timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn without_reconnect_run_ends_when_server_closes() {
    let (peer, _handle, task) = connected(framed(), 1001).await;
    drop(peer);
    let result = timeout(DEADLINE, task).await.unwrap().unwrap();
    assert!(matches!(result, Err(SimError::Closed)), "{result:?}");
}

#[tokio::test]
async fn framed_registration_timeout() {
    let (l, addr) = listener().await;
    let mut cfg = config(addr, framed());
    cfg.register_timeout = Duration::from_millis(100);
    let (device, _handle) = SimDevice::new(1001, cfg);
    let task = device.spawn();
    let _s = accept(&l).await;
    let result = timeout(DEADLINE, task).await.unwrap().unwrap();
    assert!(
        matches!(result, Err(SimError::RegistrationTimeout)),
        "{result:?}"
    );
}

#[tokio::test]
async fn reconnects_after_close_and_before_server_is_up() {
    // Reserve a port, then close it so the first attempts are refused.
    let (l, addr) = listener().await;
    drop(l);
    let mut cfg = config(addr, transparent());
    cfg.reconnect = true;
    let (device, handle) = SimDevice::new(1, cfg);
    let task = device.spawn();
    sleep(Duration::from_millis(150)).await;
    let l = TcpListener::bind(addr).await.expect("rebind");
    let mut s = accept(&l).await;
    assert_eq!(read_n(&mut s, 15).await, b"860000000000001");
    drop(s);
    let mut s = accept(&l).await;
    assert_eq!(read_n(&mut s, 15).await, b"860000000000001");
    let stats = handle.stats();
    assert!(stats.connect_failures >= 1, "{stats}");
    assert!(stats.connects >= 2, "{stats}");
    handle.stop();
    timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn framed_id_must_fit_u32() {
    let (device, _) = SimDevice::new(u64::from(u32::MAX) + 1, SimConfig::default());
    assert!(matches!(device.run().await, Err(SimError::IdOutOfRange(_))));
}

#[tokio::test]
async fn stop_while_connecting_or_backing_off() {
    let (l, addr) = listener().await;
    drop(l);
    let mut cfg = config(addr, framed());
    cfg.reconnect = true;
    cfg.backoff_min = Duration::from_secs(3600);
    let (device, handle) = SimDevice::new(1, cfg);
    let task = device.spawn();
    sleep(Duration::from_millis(100)).await;
    handle.stop();
    timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
}

proptest! {
    /// Whatever the server sends, every protocol's device side reads it without panicking,
    /// the meter answers what it finds, and at most two ADUs stay buffered between reads.
    #[test]
    fn any_bytes_from_the_server(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
    ) {
        for protocol in polled() {
            let link = device_link(protocol);
            let (device, _) = SimDevice::new(1, SimConfig { protocol, ..SimConfig::default() });
            let meter = device.shared.clone();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for chunk in &chunks {
                buf.extend_from_slice(chunk);
                loop {
                    match link.decode(&mut buf) {
                        Ok(Some(FromServer::Request(adu))) => {
                            link.answer(1, &meter.answer(&adu), &mut out);
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => {
                            buf.clear();
                            break;
                        }
                    }
                }
                prop_assert!(buf.len() <= 2 * MAX_ADU, "{protocol}: {} bytes held", buf.len());
            }
        }
    }
}
