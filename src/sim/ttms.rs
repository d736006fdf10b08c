//! Simulated `$TTMS` relay terminals for `dtu-sim --protocol ttms`: each terminal dials the
//! server, registers with a heartbeat (cmd 01, addr = its ccid), heartbeats on an interval and,
//! when asked to, sends data frames (cmd AA) to the next terminal of the ring, counting what it
//! gets back: heartbeat answers and `$TTMX` frames forwarded from other terminals.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use log::{info, warn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use tokio_util::codec::Decoder;

use super::fleet::until_stopped;
use crate::protocol::hex::to_hex;
use crate::protocol::ttms::{
    ccid_id, TtmsCodec, TtmsFrame, TtmsItem, CMD_DATA, CMD_HEARTBEAT, HEADER_IN, HEADER_OUT,
};

/// How simulated terminals behave.
#[derive(Debug, Clone)]
pub struct TtmsSimConfig {
    pub server: SocketAddr,
    pub heartbeat: Duration,
    /// Send a data frame to the next terminal of the ring this often (None: never).
    pub data_every: Option<Duration>,
    /// Dial again (after a pause) when the connection ends.
    pub reconnect: bool,
}

/// Counters of one terminal or, summed, of all of them.
#[derive(Debug, Default)]
pub struct TtmsStats {
    pub connects: AtomicU64,
    pub heartbeats_sent: AtomicU64,
    pub heartbeats_answered: AtomicU64,
    pub frames_sent: AtomicU64,
    pub frames_received: AtomicU64,
    /// Answers from the server that were not well-formed frames (wrong header, checksum).
    pub bad_frames: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TtmsSnapshot {
    pub connects: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_answered: u64,
    pub frames_sent: u64,
    pub frames_received: u64,
    pub bad_frames: u64,
}

impl TtmsStats {
    pub fn snapshot(&self) -> TtmsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TtmsSnapshot {
            connects: g(&self.connects),
            heartbeats_sent: g(&self.heartbeats_sent),
            heartbeats_answered: g(&self.heartbeats_answered),
            frames_sent: g(&self.frames_sent),
            frames_received: g(&self.frames_received),
            bad_frames: g(&self.bad_frames),
        }
    }
}

impl fmt::Display for TtmsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} connects, {}/{} heartbeats answered, {} frames sent, {} received, {} bad",
            self.connects,
            self.heartbeats_answered,
            self.heartbeats_sent,
            self.frames_sent,
            self.frames_received,
            self.bad_frames
        )
    }
}

fn heartbeat(ccid: u32) -> Vec<u8> {
    TtmsFrame {
        header: *HEADER_IN,
        addr: ccid,
        cmd: CMD_HEARTBEAT,
        body: bytes::Bytes::new(),
    }
    .to_bytes()
}

fn data(target: u32, sender: u32, n: u64) -> Vec<u8> {
    TtmsFrame {
        header: *HEADER_IN,
        addr: target,
        cmd: CMD_DATA,
        body: format!("{} #{n}", ccid_id(sender)).into_bytes().into(),
    }
    .to_bytes()
}

/// A frame from the server: `$TTMS` heartbeat answers and `$TTMX` forwarded data.
#[derive(Debug, PartialEq, Eq)]
enum FromServer {
    HeartbeatAnswer { unix_time: u32 },
    Forwarded { sender: u32, body: Vec<u8> },
    Bad(String),
}

/// Takes one whole frame off `buf`, if one is there, decoded by the relay's own codec (its
/// terminal side, which also takes the `$TTMX` frames the server forwards).
fn next_frame(buf: &mut BytesMut) -> Option<FromServer> {
    let frame = match TtmsCodec::terminal().decode(buf) {
        Ok(None) => return None,
        Ok(Some(TtmsItem::Frame(frame))) => frame,
        Ok(Some(TtmsItem::BadChecksum { raw, .. })) => {
            return Some(FromServer::Bad(format!("bad checksum {}", to_hex(&raw))))
        }
        Err(e) => {
            // No way to find the next frame in garbage: drop what is buffered.
            buf.clear();
            return Some(FromServer::Bad(e.to_string()));
        }
    };
    let forwarded = &frame.header == HEADER_OUT;
    let unix_time = <[u8; 4]>::try_from(&frame.body[..]).map(u32::from_be_bytes);
    Some(match (forwarded, frame.cmd, unix_time) {
        (false, CMD_HEARTBEAT, Ok(unix_time)) => FromServer::HeartbeatAnswer { unix_time },
        (true, CMD_DATA, _) => FromServer::Forwarded {
            sender: frame.addr,
            body: frame.body.to_vec(),
        },
        _ => FromServer::Bad(format!("unexpected frame {}", to_hex(&frame.to_bytes()))),
    })
}

/// Starts one terminal; it runs until its connection ends (or forever with `reconnect`).
pub fn spawn_terminal(
    ccid: u32,
    next: u32,
    config: TtmsSimConfig,
    stats: Arc<TtmsStats>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match run_connection(ccid, next, &config, &stats).await {
                Ok(()) => info!("terminal {}: server closed the connection", ccid_id(ccid)),
                Err(e) => warn!("terminal {}: {e}", ccid_id(ccid)),
            }
            if !config.reconnect {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

async fn run_connection(
    ccid: u32,
    next: u32,
    config: &TtmsSimConfig,
    stats: &TtmsStats,
) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(config.server).await?;
    stream.set_nodelay(true)?;
    stats.connects.fetch_add(1, Ordering::Relaxed);
    let mut beat = tokio::time::interval(config.heartbeat);
    let mut send = tokio::time::interval(config.data_every.unwrap_or(Duration::from_secs(3600)));
    // The first data frame waits one period, after the registering heartbeat.
    send.reset();
    let mut buf = BytesMut::with_capacity(1024);
    let mut sent = 0u64;
    loop {
        tokio::select! {
            _ = beat.tick() => {
                stream.write_all(&heartbeat(ccid)).await?;
                stats.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
            }
            _ = send.tick(), if config.data_every.is_some() => {
                sent += 1;
                stream.write_all(&data(next, ccid, sent)).await?;
                stats.frames_sent.fetch_add(1, Ordering::Relaxed);
            }
            read = stream.read_buf(&mut buf) => {
                if read? == 0 {
                    return Ok(());
                }
                while let Some(frame) = next_frame(&mut buf) {
                    match frame {
                        FromServer::HeartbeatAnswer { .. } => {
                            stats.heartbeats_answered.fetch_add(1, Ordering::Relaxed);
                        }
                        FromServer::Forwarded { sender, body } => {
                            log::debug!(
                                "terminal {}: from {}: {}",
                                ccid_id(ccid),
                                ccid_id(sender),
                                String::from_utf8_lossy(&body)
                            );
                            stats.frames_received.fetch_add(1, Ordering::Relaxed);
                        }
                        FromServer::Bad(why) => {
                            warn!("terminal {}: {why}", ccid_id(ccid));
                            stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    }
}

/// Runs `count` terminals with ccids `first..`, each sending to the next (the last to the
/// first), until SIGINT/SIGTERM (or until every terminal has stopped, without `reconnect`);
/// logs the counters every `report_every` (`Duration::ZERO`: never).
pub async fn run_terminals(
    config: TtmsSimConfig,
    count: u32,
    first: u32,
    report_every: Duration,
) -> TtmsSnapshot {
    let stats = Arc::new(TtmsStats::default());
    info!(
        "starting {count} $TTMS terminals {}..={} -> {}",
        ccid_id(first),
        ccid_id(first.saturating_add(count.saturating_sub(1))),
        config.server
    );
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let ccid = first.wrapping_add(i);
            let next = first.wrapping_add((i + 1) % count.max(1));
            spawn_terminal(ccid, next, config.clone(), stats.clone())
        })
        .collect();
    let all_ended = async {
        futures_util::future::join_all(tasks).await;
    };
    until_stopped(all_ended, "terminal", report_every, || {
        info!("{}", stats.snapshot())
    })
    .await;
    let total = stats.snapshot();
    info!("{total}");
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ttms::xor;

    #[test]
    fn parses_answers_and_forwarded_frames_split_anywhere() {
        let answer = TtmsFrame {
            header: *HEADER_IN,
            addr: 7,
            cmd: CMD_HEARTBEAT,
            body: bytes::Bytes::copy_from_slice(&1_700_000_000u32.to_be_bytes()),
        }
        .to_bytes();
        let forwarded = TtmsFrame {
            header: *HEADER_OUT,
            addr: 9,
            cmd: CMD_DATA,
            body: bytes::Bytes::from_static(b"hi"),
        }
        .to_bytes();
        let all = [answer, forwarded].concat();
        for cut in 0..all.len() {
            let mut buf = BytesMut::from(&all[..cut]);
            let mut got = Vec::new();
            while let Some(f) = next_frame(&mut buf) {
                got.push(f);
            }
            buf.extend_from_slice(&all[cut..]);
            while let Some(f) = next_frame(&mut buf) {
                got.push(f);
            }
            assert_eq!(
                got,
                vec![
                    FromServer::HeartbeatAnswer {
                        unix_time: 1_700_000_000
                    },
                    FromServer::Forwarded {
                        sender: 9,
                        body: b"hi".to_vec()
                    }
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn bad_checksum_and_header_are_reported() {
        let mut frame = heartbeat(1);
        let last = frame.len() - 1;
        frame[last] ^= 0xFF;
        let mut buf = BytesMut::from(&frame[..]);
        assert!(matches!(next_frame(&mut buf), Some(FromServer::Bad(_))));
        let mut buf = BytesMut::from(&b"HELLO, WORLD"[..]);
        assert!(matches!(next_frame(&mut buf), Some(FromServer::Bad(_))));
        assert!(buf.is_empty());
    }

    #[test]
    fn data_frames_carry_target_and_checksum() {
        let f = data(0x0A0B0C0D, 1, 3);
        assert_eq!(&f[..5], HEADER_IN);
        assert_eq!(&f[7..11], &[0x0A, 0x0B, 0x0C, 0x0D]);
        assert_eq!(f[11], CMD_DATA);
        assert_eq!(xor(&f[..f.len() - 1]), f[f.len() - 1]);
    }
}
