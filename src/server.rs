//! Wires the running server: storage, events, the supervisor and the offline queue, one
//! arbiter per core that accepts and runs device connections (`conn::accept`), and the HTTP
//! server. Returns when a stop signal has been handled.

use std::sync::Arc;

use actix::prelude::*;
use actix_web::{App, HttpServer};
use anyhow::Context as _;
use tokio::sync::{mpsc, watch};

use crate::command::queue::{OfflineQueue, QueueContext};
use crate::command::send::Commands;
use crate::command::Routes;
use crate::conn;
use crate::conn::accept;
use crate::conn::limits::Limits;
use crate::conn::listener::{Listener, Services};
use crate::events::bus::EventBus;
use crate::events::webhooks::{Subscriber, Webhooks};
use crate::settings::Settings;
use crate::storage::db::{Db, PrunableTable};
use crate::storage::packet_log::PacketLog;
use crate::storage::{FlushAll, Storage};
use crate::supervisor::messages::{CloseAll, InFlight, OnlineCount};
use crate::supervisor::Supervisor;
use crate::web::auth::Tokens;
use crate::web::{self, AppState};

/// Runs the server until SIGINT or SIGTERM, then stops it gracefully.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let settings = Arc::new(settings);
    raise_open_files_limit();
    // One arbiter (thread) per core runs the connections; each accepts its own.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    // Everything that can fail comes first, before any actor runs: a server that cannot have
    // all its ports and its database does not start half-way.
    let mut bound = Vec::new();
    for l in &settings.server.listeners {
        let profile = match &l.profile {
            Some(name) if l.protocol.needs_profile() => Some(
                settings
                    .data
                    .profiles
                    .get(name)
                    .cloned()
                    .with_context(|| format!("listener {}: no profile {name}", l.name))?,
            ),
            _ => None,
        };
        conn::listener::check(&l.name, l.protocol, profile.as_deref())
            .map_err(|e| anyhow::anyhow!(e))?;
        let sockets = accept::bind(l.bind, threads)
            .with_context(|| format!("listener {}: cannot listen on {}", l.name, l.bind))?;
        bound.push((l, profile, sockets));
    }
    let (url, pool_size) = (
        settings.server.database.url.clone(),
        settings.server.database.pool_size,
    );
    let db = tokio::task::spawn_blocking(move || Db::connect(&url, pool_size))
        .await
        .context("database connection task failed")?
        .context("cannot open the database")?;
    log::info!(
        "database: {} backend, migrations applied",
        db.backend.as_str()
    );
    let known = db
        .call(|db| db.devices())
        .await
        .context("cannot read the known devices")?;

    let admin = settings.server.auth.admin_token.clone();
    let tokens = db
        .call(move |db| Tokens::start(db.clone(), &admin))
        .await
        .context("cannot set up the API tokens")?;

    let storage = Storage::start(
        db.clone(),
        settings.server.storage.clone(),
        settings.server.storage.spool_path.clone(),
    );
    actix_rt::spawn(retention(db.clone(), settings.clone()));
    let bus = EventBus::default();
    let interest = bus.interest();
    let events = bus.start();
    let (webhooks, webhook_arbiter) = start_webhooks(&settings, &db, &events, &storage).await?;
    // Queued commands that were being delivered when the server last stopped without their
    // answer: whether the device got them is unknown, so they end `failed`, never sent twice.
    match db.call(|db| db.fail_interrupted(chrono::Utc::now())).await {
        Ok(0) => {}
        Ok(n) => log::warn!(
            "offline queue: {n} command(s) were being delivered when the server stopped; marked failed"
        ),
        Err(e) => log::warn!("offline queue: cannot check interrupted deliveries: {e}"),
    }
    // The supervisor and the offline queue each need the other's address.
    let supervisor_ctx = Context::<Supervisor>::new();
    let routes = Routes {
        route: supervisor_ctx.address().recipient(),
        kick: supervisor_ctx.address().recipient(),
    };
    let queue = OfflineQueue::new(
        QueueContext {
            db: db.clone(),
            storage: storage.clone(),
            events: events.clone(),
        },
        routes.clone(),
    )
    .start();
    let supervisor = supervisor_ctx.run(
        Supervisor::with_known(known, events.clone(), settings.data.profiles.clone())
            .with_queue(queue.recipient())
            .with_interest(interest),
    );
    let (stop_tx, stop_rx) = watch::channel(false);

    let arbiters: Vec<Arbiter> = (0..threads).map(|_| Arbiter::new()).collect();

    let packets = PacketLog::new(
        settings.server.storage.packets,
        settings.server.storage.recent_packets,
    );
    let services = Services {
        supervisor: supervisor.clone(),
        storage: storage.clone(),
        packets: packets.clone(),
        events: events.clone(),
        db: db.clone(),
        liveness: settings.server.liveness.clone(),
        relay_max_queue: settings.server.relay.max_queue,
        store_heartbeats: settings.server.storage.store_heartbeats,
        relay_delivering: Arc::default(),
        relay_in_flight: InFlight::default(),
        limits: Limits::new(&settings.server.limits),
    };
    // Each accept loop holds a sender; when every one is dropped, no loop accepts any more.
    let (accepting, mut accepting_ended) = mpsc::channel::<()>(1);
    for (l, profile, sockets) in bound {
        let local = sockets
            .first()
            .map(std::net::TcpListener::local_addr)
            .transpose()?;
        log::info!(
            "listener {}: {} devices on {} (profile {})",
            l.name,
            l.protocol.as_str(),
            local.map_or_else(|| l.bind.to_string(), |a| a.to_string()),
            l.profile.as_deref().unwrap_or("-")
        );
        let service = Arc::new(
            Listener::new(&l.name, l.protocol, profile, &services)
                .map_err(|e| anyhow::anyhow!(e))?,
        );
        for (socket, arbiter) in sockets.into_iter().zip(&arbiters) {
            let run =
                accept::accept_loop(socket, service.clone(), stop_rx.clone(), accepting.clone());
            if !arbiter.spawn(run) {
                anyhow::bail!("listener {}: a device arbiter is not running", l.name);
            }
        }
    }
    drop(accepting);

    let state = AppState {
        supervisor: supervisor.clone(),
        settings: settings.clone(),
        db: db.clone(),
        storage: storage.clone(),
        packets,
        commands: Commands {
            routes,
            db: db.clone(),
            storage: storage.clone(),
            events: events.clone(),
        },
        tokens,
        events: events.clone(),
        webhooks,
    };
    let http = HttpServer::new(move || {
        App::new()
            .wrap(actix_web::middleware::from_fn(
                web::error::method_not_allowed_as_json,
            ))
            .wrap(actix_web::middleware::from_fn(web::metrics::count_requests))
            .configure(web::configure(state.clone()))
    })
    .workers(threads)
    .disable_signals()
    .shutdown_timeout(5)
    .bind(settings.server.web.bind)
    .with_context(|| format!("web: cannot listen on {}", settings.server.web.bind))?;
    for addr in http.addrs() {
        log::info!("web: API and console on http://{addr}");
    }
    let http = http.run();
    let http_handle = http.handle();
    let http_task = actix_rt::spawn(http);

    wait_for_stop_signal().await?;
    log::info!("stop signal: no longer accepting connections");
    let _ = stop_tx.send(true);
    // Ends when every accept loop has dropped its sender.
    let _ = accepting_ended.recv().await;
    close_devices(&supervisor).await;
    relay_drained(&services.relay_in_flight).await;
    web::stream::stop_all();
    http_handle.stop(true).await;
    let _ = http_task.await;
    match storage.send(FlushAll::default()).await {
        Ok(report) if report.unsaved == 0 => log::info!(
            "storage flushed: {} rows written, {} rows in the spool for the next start",
            report.written,
            report.spooled
        ),
        Ok(report) => log::error!(
            "storage: {} rows could be neither written nor spooled and are lost",
            report.unsaved
        ),
        Err(e) => log::error!("storage did not answer the final flush: {e}"),
    }
    for a in arbiters {
        a.stop();
    }
    webhook_arbiter.stop();
    log::info!("stopped");
    Ok(())
}

/// Starts one sender per webhook subscriber (settings first, then the stored ones) on an
/// arbiter of their own.
async fn start_webhooks(
    settings: &Settings,
    db: &Db,
    events: &Addr<EventBus>,
    storage: &Addr<Storage>,
) -> anyhow::Result<(Webhooks, Arbiter)> {
    let stored = db
        .call(|db| db.webhooks())
        .await
        .context("cannot read the webhook subscribers")?;
    let arbiter = Arbiter::new();
    let webhooks = Webhooks::new(
        events.clone(),
        storage.clone(),
        settings.server.webhook_delivery.clone(),
        arbiter.handle(),
    );
    for (i, w) in settings.server.webhooks.iter().enumerate() {
        let sub =
            Subscriber::from_settings(i, w).map_err(|e| anyhow::anyhow!("webhooks[{i}]: {e}"))?;
        webhooks.add(sub).await.context("event bus gone")?;
    }
    for r in &stored {
        match Subscriber::from_record(r) {
            Ok(sub) => webhooks.add(sub).await.context("event bus gone")?,
            Err(e) => log::error!("webhook {}: not started: {e}", r.id),
        }
    }
    Ok((webhooks, arbiter))
}

/// Closes every device connection and waits (a few seconds at most) until each has reported
/// offline, so that their last rows reach storage before the final flush.
async fn close_devices(supervisor: &Addr<Supervisor>) {
    let Ok(open) = supervisor.send(CloseAll).await else {
        return;
    };
    if open == 0 {
        return;
    }
    log::info!("closing {open} device connection(s)");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        match supervisor.send(OnlineCount).await {
            Ok(0) | Err(_) => return,
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    log::warn!("some devices had not reported offline within 5 s");
}

/// Waits (a few seconds at most) until every `$TTMS` frame read from a terminal has been
/// written to its target or committed to `relay_queue`, so that none is lost at shutdown.
async fn relay_drained(in_flight: &InFlight) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    if in_flight.count() == 0 {
        return;
    }
    log::info!("waiting for {} relay frame(s) in flight", in_flight.count());
    while tokio::time::Instant::now() < deadline {
        if in_flight.count() == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    log::warn!(
        "{} relay frame(s) were neither written nor queued within 5 s",
        in_flight.count()
    );
}

/// Deletes telemetry and raw packets past their retention, once shortly after start and then
/// every hour, on a blocking thread.
async fn retention(db: Db, settings: Arc<Settings>) {
    let storage = &settings.server.storage;
    let jobs = [
        (
            PrunableTable::Telemetry,
            "telemetry",
            storage.retention_telemetry,
        ),
        (
            PrunableTable::RawPackets,
            "raw packets",
            storage.retention_packets,
        ),
        // Delivered $TTMS frames are history like raw packets; waiting ones are never pruned.
        (
            PrunableTable::DeliveredRelay,
            "delivered relay frames",
            storage.retention_packets,
        ),
        (
            PrunableTable::WebhookDeliveries,
            "webhook delivery attempts",
            storage.retention_deliveries,
        ),
    ];
    if jobs.iter().all(|(_, _, keep)| keep.is_none()) {
        return;
    }
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tick.tick().await;
        for (table, name, keep) in jobs {
            let Some(keep) = keep else { continue };
            let Ok(keep) = chrono::Duration::from_std(keep) else {
                continue;
            };
            let before = chrono::Utc::now() - keep;
            match db.call(move |db| db.prune(table, before)).await {
                Ok(0) => {}
                Ok(n) => log::info!("retention: deleted {n} {name} rows older than {before}"),
                Err(e) => log::warn!("retention: deleting old {name} failed: {e}"),
            }
        }
    }
}

/// Raises the soft limit on open files to the hard limit, and logs both: every connected DTU
/// holds a socket, and the usual soft default (1,024) would refuse DTUs long before the host
/// runs out of anything else. The hard limit is the host's to set (see the README).
fn raise_open_files_limit() {
    let (soft, hard) = match rlimit::Resource::NOFILE.get() {
        Ok(limits) => limits,
        Err(e) => {
            log::warn!("open files: cannot read the limit: {e}");
            return;
        }
    };
    if soft >= hard {
        log::info!("open files: limit {soft} (hard limit {hard}); each connected DTU holds one");
        return;
    }
    match rlimit::increase_nofile_limit(hard) {
        Ok(now) => log::info!(
            "open files: soft limit raised from {soft} to {now} (hard limit {hard}); each connected DTU holds one"
        ),
        Err(e) => log::warn!(
            "open files: cannot raise the soft limit {soft} to the hard limit {hard}: {e}"
        ),
    }
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM received"),
        _ = int.recv() => log::info!("SIGINT received"),
    }
    Ok(())
}
