//! The yardstick: the least program that does dtu-supervisor's work for framed DTUs, to
//! measure the server against. Plain tokio, one task per connection:
//!
//! - accept; read the 4-byte registration (closing a connection that has sent none within
//!   `register_timeout`), acknowledge it `01`;
//! - acknowledge heartbeats `02 00` with `02` (and data packets with `03`); close a connection
//!   silent for `heartbeat_interval * max_missed`;
//! - poll the profile's first timer poll on its timer (the first at once), one request in
//!   flight, a `response_timeout`; check the answer (CRC, slave, function, length) and decode
//!   the profile's points in it;
//! - batch-insert the values into the telemetry layout (`series`, `points`) on a writer
//!   thread with rusqlite: everything waiting, in one transaction through prepared
//!   statements, each series id looked up once and then kept in memory.
//!
//! It reads the same settings directory as the server (`dtu_supervisor::settings`) and works
//! on a database made by the server's own migrations, so both store the same rows in the same
//! table. Bytes are read and written with the server's codec (`protocol::framed`), answers
//! checked and decoded by `protocol::modbus` and `protocol::points`: what differs is
//! everything around them. What it leaves out: raw packets, connection events, the devices
//! table, the supervisor's latest values, events, rules, the API.
//!
//! Counters go to stderr when it stops (SIGTERM or Ctrl-C); a connection closed for not
//! registering logs a line with "no registration within", as the server's does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use dtu_supervisor::protocol::framed::FramedCodec;
use dtu_supervisor::protocol::link::{Inbound, LinkCodec, Outbound};
use dtu_supervisor::protocol::modbus::{rtu, Request, Response};
use dtu_supervisor::protocol::points::{self, BlockData, Decoded, Point};
use dtu_supervisor::settings::{self, PollTrigger};
use dtu_supervisor::storage::db::Db;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{interval, timeout, Instant, MissedTickBehavior};

/// Most rows in one transaction: enough to pay for the commit many times over.
const MAX_BATCH_ROWS: usize = 10_000;

/// What every connection needs, shared.
struct Shared {
    slave: u8,
    request: Request,
    /// The request as it goes on the wire (`04 LL <ADU>`): the same for every poll.
    wire: Bytes,
    every: Duration,
    start: u16,
    points: Vec<Point>,
    response_timeout: Duration,
    register_timeout: Duration,
    silence_limit: Duration,
    rows: mpsc::Sender<Polled>,
    counts: Counts,
}

#[derive(Default)]
struct Counts {
    registered: AtomicU64,
    no_registration: AtomicU64,
    polls_sent: AtomicU64,
    polls_answered: AtomicU64,
    bad_answers: AtomicU64,
    timeouts: AtomicU64,
}

/// The decoded values of one answered poll, for the writer.
struct Polled {
    device: String,
    at: DateTime<Utc>,
    values: Vec<Decoded>,
}

/// Serve the framed listener of the settings in `dir` until SIGTERM / Ctrl-C. Prints
/// `listening on ADDR` on stdout once it accepts.
pub fn run(dir: &Path) -> anyhow::Result<()> {
    let settings = settings::load(dir).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!("settings: {}", lines.join("; "))
    })?;
    let listener = settings
        .server
        .listeners
        .iter()
        .find(|l| l.protocol.as_str() == "framed")
        .context("the yardstick serves a framed listener; the settings have none")?;
    let profile = listener
        .profile
        .as_ref()
        .and_then(|name| settings.data.profiles.get(name))
        .context("the framed listener has no profile")?;
    let (poll, every) = profile
        .polls
        .iter()
        .find_map(|p| match (p.trigger.clone(), p.block()) {
            (PollTrigger::Every(every), Some(block)) if block.reads_registers() => {
                Some((block, every))
            }
            _ => None,
        })
        .context("the yardstick polls the profile's first timer poll of registers; it has none")?;
    let request = Request::read(poll.function, poll.start, poll.count)?;
    let mut wire = BytesMut::new();
    FramedCodec::new().encode(
        Outbound::Request(Bytes::from(request.encode(profile.slave))),
        &mut wire,
    )?;

    let url = &settings.server.database.url;
    let Some(path) = url.strip_prefix("sqlite://") else {
        bail!("the yardstick writes SQLite only, not {url}");
    };
    // The server's migrations make the database, so both write the same table.
    drop(Db::connect(url, 1)?);
    let conn = rusqlite::Connection::open(path)?;
    // As the server opens its SQLite connections.
    conn.execute_batch(
        "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;",
    )?;
    let (rows, to_write) = mpsc::channel();
    let writer = std::thread::spawn(move || write_rows(conn, to_write));

    let liveness = &settings.server.liveness;
    let shared = Arc::new(Shared {
        slave: profile.slave,
        request,
        wire: wire.freeze(),
        every,
        start: poll.start,
        points: profile.points.clone(),
        response_timeout: profile.response_timeout,
        register_timeout: liveness.register_timeout,
        silence_limit: liveness.heartbeat_interval * liveness.max_missed,
        rows,
        counts: Counts::default(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let bind = listener.bind;
    runtime.block_on(serve(bind, shared.clone()))?;
    // Dropping the runtime drops every connection task and its sender of rows; the writer
    // then writes what is left and ends.
    runtime.shutdown_timeout(Duration::from_secs(1));
    let c = &shared.counts;
    let summary = format!(
        "yardstick: registered {} no_registration {} polls_sent {} polls_answered {} \
         bad_answers {} timeouts {}",
        c.registered.load(Ordering::Relaxed),
        c.no_registration.load(Ordering::Relaxed),
        c.polls_sent.load(Ordering::Relaxed),
        c.polls_answered.load(Ordering::Relaxed),
        c.bad_answers.load(Ordering::Relaxed),
        c.timeouts.load(Ordering::Relaxed),
    );
    drop(shared);
    let written = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))??;
    eprintln!("{summary} rows_written {written}");
    Ok(())
}

async fn serve(bind: SocketAddr, shared: Arc<Shared>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(bind).await?;
    println!("listening on {}", listener.local_addr()?);
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(connection(stream, peer, shared.clone()));
                }
                // Out of files, most likely: a fleet bigger than the limit. Keep serving.
                Err(e) => {
                    eprintln!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// One DTU, from accept to close. Any I/O error ends it.
async fn connection(mut stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let mut codec = FramedCodec::new();
    let mut buf = BytesMut::with_capacity(64);
    let mut out = BytesMut::new();
    let c = &shared.counts;

    // The registration: a device silent for `register_timeout` is closed. A registration
    // already in the socket when the timer fires still counts (the read is tried first).
    let device = match timeout(
        shared.register_timeout,
        register(&mut stream, &mut codec, &mut buf),
    )
    .await
    {
        Ok(Some(id)) => id,
        Ok(None) => return,
        Err(_) => {
            c.no_registration.fetch_add(1, Ordering::Relaxed);
            eprintln!(
                "{peer}: no registration within {} ms; closing",
                shared.register_timeout.as_millis()
            );
            return;
        }
    };
    if send(&mut stream, &mut codec, &mut out, Outbound::RegisterAck)
        .await
        .is_err()
    {
        return;
    }
    c.registered.fetch_add(1, Ordering::Relaxed);

    let mut polls = interval(shared.every);
    // A late tick keeps the schedule (10 polls a second stay 10), as the server's timer does.
    polls.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut liveness = interval(shared.silence_limit);
    liveness.set_missed_tick_behavior(MissedTickBehavior::Delay);
    liveness.tick().await;
    let mut last_rx = Instant::now();
    // When the request in flight was written.
    let mut in_flight: Option<Instant> = None;
    loop {
        tokio::select! {
            read = stream.read_buf(&mut buf) => {
                match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => last_rx = Instant::now(),
                }
                loop {
                    let reply = match codec.decode(&mut buf) {
                        Ok(None) => break,
                        Ok(Some(Inbound::Heartbeat { .. })) => Outbound::HeartbeatAck,
                        Ok(Some(Inbound::Data(_))) => Outbound::DataAck,
                        Ok(Some(Inbound::Answer(adu))) => {
                            if in_flight.take().is_some() {
                                answered(&shared, &device, &adu);
                            }
                            continue;
                        }
                        Ok(Some(_)) => continue,
                        // Frame boundaries are lost: nothing after this can be read.
                        Err(_) => return,
                    };
                    if send(&mut stream, &mut codec, &mut out, reply).await.is_err() {
                        return;
                    }
                }
            }
            _ = polls.tick() => {
                if let Some(sent) = in_flight {
                    if sent.elapsed() < shared.response_timeout {
                        continue;
                    }
                    c.timeouts.fetch_add(1, Ordering::Relaxed);
                }
                if stream.write_all(&shared.wire).await.is_err() {
                    return;
                }
                c.polls_sent.fetch_add(1, Ordering::Relaxed);
                in_flight = Some(Instant::now());
            }
            _ = liveness.tick() => {
                if last_rx.elapsed() > shared.silence_limit {
                    return;
                }
            }
        }
    }
}

/// Reads until the registration; `None` if the connection ends or sends something else.
async fn register(
    stream: &mut TcpStream,
    codec: &mut FramedCodec,
    buf: &mut BytesMut,
) -> Option<String> {
    loop {
        match codec.decode(buf) {
            Ok(Some(Inbound::Register { id, .. })) => return Some(id),
            Ok(Some(_)) | Err(_) => return None,
            Ok(None) => {}
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn send(
    stream: &mut TcpStream,
    codec: &mut FramedCodec,
    out: &mut BytesMut,
    item: Outbound,
) -> std::io::Result<()> {
    out.clear();
    codec
        .encode(item, out)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    stream.write_all(out).await
}

/// An answer to the poll in flight: checked, decoded, handed to the writer.
fn answered(shared: &Shared, device: &str, adu: &[u8]) {
    let c = &shared.counts;
    match rtu::parse_response(shared.slave, &shared.request, adu) {
        Ok(Response::Registers(registers)) => {
            c.polls_answered.fetch_add(1, Ordering::Relaxed);
            let values = points::decode_block(
                &shared.points,
                shared.start,
                &BlockData::Registers(&registers),
            );
            let _ = shared.rows.send(Polled {
                device: device.to_owned(),
                at: Utc::now(),
                values,
            });
        }
        _ => {
            c.bad_answers.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The writer thread: everything waiting (up to [`MAX_BATCH_ROWS`]) in one transaction,
/// until every sender is gone. Returns the rows written.
fn write_rows(
    mut conn: rusqlite::Connection,
    polled: mpsc::Receiver<Polled>,
) -> rusqlite::Result<u64> {
    let mut written = 0;
    // Device → point → series id: looked up without building a key.
    let mut series: HashMap<String, HashMap<String, i64>> = HashMap::new();
    while let Ok(first) = polled.recv() {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare(
                "INSERT OR REPLACE INTO points (series_id, at, value, raw) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut new_series =
                tx.prepare("INSERT OR IGNORE INTO series (device_id, point) VALUES (?1, ?2)")?;
            let mut series_id =
                tx.prepare("SELECT id FROM series WHERE device_id = ?1 AND point = ?2")?;
            let mut next = Some(first);
            let mut rows = 0;
            while let Some(p) = next.take() {
                // As the server stores a time: milliseconds since the epoch.
                let at = p.at.timestamp_millis();
                for v in &p.values {
                    let known = series.get(&p.device).and_then(|m| m.get(&v.name));
                    let id = match known {
                        Some(id) => *id,
                        None => {
                            new_series.execute(rusqlite::params![p.device, v.name])?;
                            let id: i64 = series_id
                                .query_row(rusqlite::params![p.device, v.name], |r| r.get(0))?;
                            series
                                .entry(p.device.clone())
                                .or_default()
                                .insert(v.name.clone(), id);
                            id
                        }
                    };
                    insert.execute(rusqlite::params![id, at, v.value, v.raw])?;
                    rows += 1;
                }
                if rows < MAX_BATCH_ROWS {
                    next = polled.try_recv().ok();
                }
            }
            written += rows as u64;
        }
        tx.commit()?;
    }
    Ok(written)
}
