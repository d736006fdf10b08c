//! What a listener starts for each accepted socket: the driver its protocol's role calls for.
//! This is the one place a role becomes a driver; a new request/response protocol needs no
//! edit here.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use actix::Addr;
use tokio::net::TcpStream;

use crate::conn::device::{PollContext, PollDriver};
use crate::conn::lifecycle::{Connection, ListenerShared};
use crate::conn::limits::Limits;
use crate::conn::relay::{RelayContext, RelayDriver};
use crate::events::bus::EventBus;
use crate::protocol::link::{LinkCodec, LinkOptions, Role};
use crate::protocol::Protocol;
use crate::settings::{LivenessSettings, Profile};
use crate::storage::db::Db;
use crate::storage::packet_log::PacketLog;
use crate::storage::Storage;
use crate::supervisor::messages::InFlight;
use crate::supervisor::Supervisor;

/// What the connections of every listener reach.
#[derive(Clone)]
pub struct Services {
    pub supervisor: Addr<Supervisor>,
    pub storage: Addr<Storage>,
    /// Every device's last packets, and which of them the database gets.
    pub packets: PacketLog,
    pub events: Addr<EventBus>,
    pub db: Db,
    pub liveness: LivenessSettings,
    /// `[relay] max_queue`.
    pub relay_max_queue: usize,
    /// `[storage] store_heartbeats`.
    pub store_heartbeats: bool,
    /// `$TTMS` targets whose queue is being delivered, over every listener.
    pub relay_delivering: Arc<Mutex<HashSet<String>>>,
    /// `$TTMS` frames in flight, over every listener; shutdown waits for them.
    pub relay_in_flight: InFlight,
    /// `[limits]`, over every device listener.
    pub limits: Arc<Limits>,
}

/// One configured listener, ready to start connections.
pub struct Listener {
    shared: Arc<ListenerShared>,
    kind: Kind,
    limits: Arc<Limits>,
}

enum Kind {
    Polled {
        ctx: Arc<PollContext>,
        server: fn(&LinkOptions) -> Result<Box<dyn LinkCodec>, String>,
        options: LinkOptions,
    },
    Relay(Arc<RelayContext>),
}

/// Whether a listener speaking `protocol` can serve devices of `profile`: a polled protocol's
/// codec must be buildable from it (a transparent DTU's profile says how it registers).
pub fn check(name: &str, protocol: Protocol, profile: Option<&Profile>) -> Result<(), String> {
    match protocol.role() {
        Role::Polled { server, .. } => server(&link_options(profile))
            .map(|_| ())
            .map_err(|e| format!("listener {name}: {e}")),
        Role::Relay => Ok(()),
    }
}

/// What a polled protocol's codec takes from the profile.
fn link_options(profile: Option<&Profile>) -> LinkOptions {
    LinkOptions {
        registration: profile.and_then(|p| p.registration.clone()),
        heartbeat: profile.and_then(|p| p.heartbeat.clone()),
    }
}

impl Listener {
    /// A listener speaking `protocol`, its devices polled with `profile`. Fails when the
    /// protocol cannot make a codec from the profile ([`check`]).
    pub fn new(
        name: &str,
        protocol: Protocol,
        profile: Option<Arc<Profile>>,
        services: &Services,
    ) -> Result<Listener, String> {
        let shared = Arc::new(ListenerShared {
            name: name.to_string(),
            protocol,
            profile: profile.as_ref().map(|p| p.name.clone()),
            liveness: services.liveness.clone(),
            supervisor: services.supervisor.clone(),
            storage: services.storage.clone(),
            packets: services.packets.clone(),
        });
        let kind = match protocol.role() {
            Role::Polled { server, .. } => {
                check(name, protocol, profile.as_deref())?;
                let options = link_options(profile.as_deref());
                Kind::Polled {
                    ctx: Arc::new(PollContext {
                        profile,
                        events: services.events.clone(),
                    }),
                    server,
                    options,
                }
            }
            Role::Relay => Kind::Relay(Arc::new(RelayContext {
                supervisor: services.supervisor.clone(),
                storage: services.storage.clone(),
                db: services.db.clone(),
                max_queue: services.relay_max_queue,
                store_heartbeats: services.store_heartbeats,
                delivering: services.relay_delivering.clone(),
                in_flight: services.relay_in_flight.clone(),
            })),
        };
        Ok(Listener {
            shared,
            kind,
            limits: services.limits.clone(),
        })
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Starts the connection's actor on the current arbiter, if the limits let it in;
    /// otherwise the socket is closed at once, unread (counted by [`Limits::admit`]).
    pub fn start(&self, stream: TcpStream, peer: SocketAddr) {
        let Ok(permit) = self.limits.admit(peer.ip(), self.name()) else {
            drop(stream);
            return;
        };
        let shared = self.shared.clone();
        match &self.kind {
            Kind::Polled {
                ctx,
                server,
                options,
            } => match server(options) {
                Ok(codec) => Connection::start(
                    stream,
                    peer,
                    permit,
                    shared,
                    PollDriver::new(ctx.clone(), codec),
                ),
                Err(e) => log::error!(
                    "listener {}: {e}; closing connection from {peer}",
                    self.name()
                ),
            },
            Kind::Relay(ctx) => {
                Connection::start(stream, peer, permit, shared, RelayDriver::new(ctx.clone()))
            }
        }
    }
}
