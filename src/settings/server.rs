//! Validation of the merged server settings tree (defaults + server file + environment).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use config::{Value, ValueKind};

use super::data::ProfileIndex;
use super::tree::{
    array, array_of, boolean, byte_size, duration, index_path, name, parsed, report_duplicates,
    socket_addr, string, uint, Ctx, Section,
};
use super::{
    AuthSettings, DatabaseSettings, LimitSettings, ListenerSettings, LivenessSettings,
    RelaySettings, ServerSettings, StorageSettings, WebSettings,
};
use crate::events::bus::EventKind;
use crate::events::webhooks::{check_webhook_url, WebhookDeliverySettings, WebhookSettings};
use crate::protocol::Protocol;

/// Database URL schemes the storage layer can open.
const DATABASE_SCHEMES: [&str; 5] = [
    "sqlite:",
    "mysql://",
    "mariadb://",
    "postgres://",
    "postgresql://",
];

/// Reads every server setting, recording each problem in `ctx`. `profiles` is what data.toml
/// defines (None when it could not be read, which skips the cross-file checks). The result is
/// only meaningful when no problem was recorded.
pub(super) fn validate(
    ctx: &mut Ctx<'_>,
    root: &Value,
    profiles: Option<&ProfileIndex>,
) -> ServerSettings {
    let d = ServerSettings::default();
    let Some(top) = Section::new(
        ctx,
        "",
        root,
        &[
            "web",
            "listeners",
            "liveness",
            "database",
            "storage",
            "auth",
            "webhooks",
            "webhook_delivery",
            "relay",
            "limits",
        ],
    ) else {
        return d;
    };

    let web = top
        .get("web")
        .and_then(|v| Section::new(ctx, "web", v, &["bind", "metrics_token", "stream_queue"]));
    let web_bind = match &web {
        Some(s) => s.field(ctx, "bind", socket_addr).or(d.web.bind),
        None => None,
    };
    let web_bind_value = web.as_ref().and_then(|s| s.get("bind"));

    let listeners = listeners(ctx, &top, profiles);

    // Two sockets on one port would make the second bind fail at start.
    let mut binds: Vec<(String, SocketAddr, Option<&Value>)> = Vec::new();
    if let Some(addr) = web_bind {
        binds.push(("web.bind".into(), addr, web_bind_value));
    }
    binds.extend(
        listeners
            .iter()
            .filter_map(|(_, path, bind, v)| bind.map(|b| (format!("{path}.bind"), b, *v))),
    );
    for (j, (path, addr, value)) in binds.iter().enumerate() {
        if let Some((other, other_addr, _)) =
            binds[..j].iter().find(|(_, a, _)| same_socket(*a, *addr))
        {
            ctx.err(
                path,
                *value,
                format!(
                    "{addr} conflicts with {other} = {other_addr}: port {} is taken",
                    addr.port()
                ),
            );
        }
    }

    let liveness = match top.get("liveness") {
        Some(v) => Section::new(
            ctx,
            "liveness",
            v,
            &["heartbeat_interval", "max_missed", "register_timeout"],
        )
        .map(|s| LivenessSettings {
            heartbeat_interval: s
                .field(ctx, "heartbeat_interval", duration)
                .or(d.liveness.heartbeat_interval)
                .unwrap_or(d.liveness.heartbeat_interval),
            max_missed: s
                .field(ctx, "max_missed", uint(1, u32::MAX.into()))
                .or(d.liveness.max_missed)
                .unwrap_or(d.liveness.max_missed),
            register_timeout: s
                .field(ctx, "register_timeout", duration)
                .or(d.liveness.register_timeout)
                .unwrap_or(d.liveness.register_timeout),
        }),
        None => None,
    };

    let database = match top.get("database") {
        Some(v) => {
            Section::new(ctx, "database", v, &["url", "pool_size"]).map(|s| DatabaseSettings {
                url: s
                    .field(ctx, "url", database_url)
                    .or(d.database.url.clone())
                    .unwrap_or_default(),
                pool_size: s
                    .field(ctx, "pool_size", uint(1, u32::MAX.into()))
                    .or(d.database.pool_size)
                    .unwrap_or(d.database.pool_size),
            })
        }
        None => None,
    };

    let storage = match top.get("storage") {
        Some(v) => Section::new(
            ctx,
            "storage",
            v,
            &[
                "batch_size",
                "flush_interval",
                "max_buffer",
                "store_heartbeats",
                "spool_path",
                "max_spool",
                "warn_lag",
                "retention_telemetry",
                "retention_packets",
                "retention_deliveries",
                "packets",
                "recent_packets",
            ],
        )
        .map(|s| StorageSettings {
            batch_size: s
                .field(ctx, "batch_size", uint(1, u32::MAX.into()))
                .or(d.storage.batch_size)
                .unwrap_or(d.storage.batch_size),
            flush_interval: s
                .field(ctx, "flush_interval", duration)
                .or(d.storage.flush_interval)
                .unwrap_or(d.storage.flush_interval),
            max_buffer: s
                .field(ctx, "max_buffer", uint(1, u32::MAX.into()))
                .or(d.storage.max_buffer)
                .unwrap_or(d.storage.max_buffer),
            store_heartbeats: s
                .field(ctx, "store_heartbeats", boolean)
                .or(d.storage.store_heartbeats)
                .unwrap_or(d.storage.store_heartbeats),
            spool_path: s
                .field(ctx, "spool_path", string)
                .or(d.storage.spool_path.display().to_string())
                .map_or_else(|| d.storage.spool_path.clone(), PathBuf::from),
            max_spool: s
                .field(ctx, "max_spool", byte_size)
                .or(d.storage.max_spool)
                .unwrap_or(d.storage.max_spool),
            warn_lag: s
                .field(ctx, "warn_lag", duration)
                .or(d.storage.warn_lag)
                .unwrap_or(d.storage.warn_lag),
            retention_telemetry: s
                .field(ctx, "retention_telemetry", retention)
                .or(d.storage.retention_telemetry)
                .unwrap_or(d.storage.retention_telemetry),
            retention_packets: s
                .field(ctx, "retention_packets", retention)
                .or(d.storage.retention_packets)
                .unwrap_or(d.storage.retention_packets),
            retention_deliveries: s
                .field(ctx, "retention_deliveries", retention)
                .or(d.storage.retention_deliveries)
                .unwrap_or(d.storage.retention_deliveries),
            packets: s
                .field(ctx, "packets", parsed)
                .or(d.storage.packets)
                .unwrap_or(d.storage.packets),
            recent_packets: s
                .field(ctx, "recent_packets", uint(0, 100_000))
                .or(d.storage.recent_packets)
                .unwrap_or(d.storage.recent_packets),
        }),
        None => None,
    };

    let auth = match top.get("auth") {
        Some(v) => Section::new(ctx, "auth", v, &["admin_token"]).map(|s| AuthSettings {
            admin_token: s
                .field(ctx, "admin_token", string)
                .or(String::new())
                .unwrap_or_default(),
        }),
        None => None,
    };

    let webhooks = webhooks(ctx, &top);
    let webhook_delivery = match top.get("webhook_delivery") {
        Some(v) => webhook_delivery(ctx, v, &d.webhook_delivery),
        None => None,
    };

    let relay = match top.get("relay") {
        Some(v) => Section::new(ctx, "relay", v, &["max_queue"]).map(|s| RelaySettings {
            max_queue: s
                .field(ctx, "max_queue", uint(1, u32::MAX.into()))
                .or(d.relay.max_queue)
                .unwrap_or(d.relay.max_queue),
        }),
        None => None,
    };

    let limits = match top.get("limits") {
        Some(v) => Section::new(
            ctx,
            "limits",
            v,
            &["max_connections", "max_per_address", "max_unregistered"],
        )
        .map(|s| LimitSettings {
            max_connections: s
                .field(ctx, "max_connections", uint(0, 10_000_000))
                .or(d.limits.max_connections)
                .unwrap_or(d.limits.max_connections),
            max_per_address: s
                .field(ctx, "max_per_address", uint(1, 10_000_000))
                .or(d.limits.max_per_address)
                .unwrap_or(d.limits.max_per_address),
            max_unregistered: s
                .field(ctx, "max_unregistered", uint(1, 10_000_000))
                .or(d.limits.max_unregistered)
                .unwrap_or(d.limits.max_unregistered),
        }),
        None => None,
    };

    ServerSettings {
        web: WebSettings {
            bind: web_bind.unwrap_or(d.web.bind),
            metrics_token: web
                .as_ref()
                .and_then(|s| {
                    s.field(ctx, "metrics_token", boolean)
                        .or(d.web.metrics_token)
                })
                .unwrap_or(d.web.metrics_token),
            stream_queue: web
                .as_ref()
                .and_then(|s| {
                    s.field(ctx, "stream_queue", uint(1, 1_000_000))
                        .or(d.web.stream_queue)
                })
                .unwrap_or(d.web.stream_queue),
        },
        listeners: listeners.into_iter().filter_map(|(l, _, _, _)| l).collect(),
        liveness: liveness.unwrap_or(d.liveness),
        database: database.unwrap_or(d.database),
        storage: storage.unwrap_or(d.storage),
        auth: auth.unwrap_or(d.auth),
        webhooks,
        webhook_delivery: webhook_delivery.unwrap_or(d.webhook_delivery),
        relay: relay.unwrap_or(d.relay),
        limits: limits.unwrap_or(d.limits),
    }
}

/// Whether binding both addresses would clash: same port (not 0, which picks a free one) and
/// the same IP, or either one listening on all addresses.
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// A listener (None where invalid), its path, its bind (checked for clashes even when another
/// key of the listener is wrong) and the bind's value.
type ListenerEntry<'a> = (
    Option<ListenerSettings>,
    String,
    Option<SocketAddr>,
    Option<&'a Value>,
);

/// Each listener (None where invalid) with its path and the value of its bind.
fn listeners<'a>(
    ctx: &mut Ctx<'_>,
    top: &Section<'a>,
    profiles: Option<&ProfileIndex>,
) -> Vec<ListenerEntry<'a>> {
    let items = top.field(ctx, "listeners", array).or(&[]).unwrap_or(&[]);
    let mut out = Vec::new();
    let mut names = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = index_path("listeners", i);
        let Some(s) = Section::new(ctx, &path, item, &["name", "bind", "protocol", "profile"])
        else {
            out.push((None, path, None, None));
            continue;
        };
        let listener_name = s.required(ctx, "name", name);
        let bind = s.required(ctx, "bind", socket_addr);
        let protocol = s.required(ctx, "protocol", parsed::<Protocol>);
        let profile = s.field(ctx, "profile", name).optional();
        // The profile is checked even when the protocol is wrong: every problem, not the first.
        if let Some(profile) = &profile {
            check_profile(ctx, &s, protocol, profile.as_deref(), profiles);
        }
        if let Some(n) = &listener_name {
            names.push((s.key("name"), n.clone()));
        }
        let listener = match (listener_name, bind, protocol, profile) {
            (Some(name), Some(bind), Some(protocol), Some(profile)) => Some(ListenerSettings {
                name,
                bind,
                protocol,
                profile,
            }),
            _ => None,
        };
        out.push((listener, path, bind, s.get("bind")));
    }
    report_duplicates(ctx, "listener", &names);
    out
}

/// A listener's profile must exist in data.toml, and a transparent one's must say how
/// devices register.
fn check_profile(
    ctx: &mut Ctx<'_>,
    s: &Section<'_>,
    protocol: Option<Protocol>,
    profile: Option<&str>,
    profiles: Option<&ProfileIndex>,
) {
    let path = s.key("profile");
    let value = s.get("profile");
    let Some(profile) = profile else {
        if let Some(protocol) = protocol.filter(|p| p.needs_profile()) {
            ctx.err(
                &path,
                None,
                format!("missing: a {protocol} listener needs a profile of the data file"),
            );
        }
        return;
    };
    let Some(index) = profiles else {
        return;
    };
    match index.profiles.get(profile) {
        None => {
            let known: Vec<&str> = index.profiles.keys().map(String::as_str).collect();
            let known = if known.is_empty() {
                "it defines none".to_string()
            } else {
                format!("it defines {}", known.join(", "))
            };
            ctx.err(
                &path,
                value,
                format!(
                    "profile {profile:?} is not defined in {} ({known})",
                    index.file
                ),
            );
        }
        Some(info) if !info.has_registration => {
            if let Some(protocol) = protocol.filter(|p| p.needs_registration()) {
                ctx.err(
                    &path,
                    value,
                    format!(
                        "profile {profile:?} has no [profiles.{profile}.registration], which a {protocol} listener needs"
                    ),
                );
            }
        }
        Some(_) => {}
    }
}

/// A retention period, or "forever" to keep rows for good.
fn retention(ctx: &mut Ctx<'_>, path: &str, v: &Value) -> Option<Option<Duration>> {
    if matches!(&v.kind, ValueKind::String(t) if t.trim().eq_ignore_ascii_case("forever")) {
        return Some(None);
    }
    duration(ctx, path, v).map(Some)
}

fn database_url(ctx: &mut Ctx<'_>, path: &str, v: &Value) -> Option<String> {
    let url = name(ctx, path, v)?;
    let lower = url.trim().to_ascii_lowercase();
    if DATABASE_SCHEMES.iter().any(|s| lower.starts_with(s)) {
        Some(url)
    } else {
        // The URL may hold a password: do not echo it.
        ctx.err(
            path,
            Some(v),
            "unsupported database URL: it must start with sqlite:, mysql://, mariadb://, postgres:// or postgresql://",
        );
        None
    }
}

fn webhooks(ctx: &mut Ctx<'_>, top: &Section<'_>) -> Vec<WebhookSettings> {
    let items = top.field(ctx, "webhooks", array).or(&[]).unwrap_or(&[]);
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = index_path("webhooks", i);
        let Some(s) = Section::new(ctx, &path, item, &["url", "events", "secret", "devices"])
        else {
            continue;
        };
        let url = s.required(ctx, "url", webhook_url);
        let events = s.required(ctx, "events", array_of(event_name));
        if events.as_ref().is_some_and(Vec::is_empty) {
            ctx.err(
                &s.key("events"),
                s.get("events"),
                "must not be empty (use [\"*\"] for all events)",
            );
        }
        let secret = s.field(ctx, "secret", string).optional();
        let devices = s.field(ctx, "devices", array_of(device_pattern)).optional();
        if let (Some(url), Some(events), Some(secret), Some(devices)) =
            (url, events, secret, devices)
        {
            out.push(WebhookSettings {
                url,
                events,
                secret: secret.filter(|s| !s.is_empty()),
                devices,
            });
        }
    }
    out
}

fn webhook_delivery(
    ctx: &mut Ctx<'_>,
    v: &Value,
    d: &WebhookDeliverySettings,
) -> Option<WebhookDeliverySettings> {
    let s = Section::new(
        ctx,
        "webhook_delivery",
        v,
        &[
            "timeout",
            "max_attempts",
            "backoff_initial",
            "backoff_max",
            "pause_after",
            "pause_for",
            "queue",
            "batch_max",
        ],
    )?;
    let dur = |ctx: &mut Ctx<'_>, key: &str, default: Duration| {
        s.field(ctx, key, duration).or(default).unwrap_or(default)
    };
    let timeout = dur(ctx, "timeout", d.timeout);
    if timeout.is_zero() {
        ctx.err(&s.key("timeout"), s.get("timeout"), "must be more than 0");
    }
    let out = WebhookDeliverySettings {
        timeout,
        max_attempts: s
            .field(ctx, "max_attempts", uint(1, 100))
            .or(d.max_attempts)
            .unwrap_or(d.max_attempts),
        backoff_initial: dur(ctx, "backoff_initial", d.backoff_initial),
        backoff_max: dur(ctx, "backoff_max", d.backoff_max),
        pause_after: s
            .field(ctx, "pause_after", uint(1, u32::MAX.into()))
            .or(d.pause_after)
            .unwrap_or(d.pause_after),
        pause_for: dur(ctx, "pause_for", d.pause_for),
        queue: s
            .field(ctx, "queue", uint(1, 10_000_000))
            .or(d.queue)
            .unwrap_or(d.queue),
        batch_max: s
            .field(ctx, "batch_max", uint(1, 10_000))
            .or(d.batch_max)
            .unwrap_or(d.batch_max),
    };
    if out.backoff_max < out.backoff_initial {
        ctx.err(
            &s.key("backoff_max"),
            s.get("backoff_max"),
            "must not be shorter than backoff_initial",
        );
    }
    Some(out)
}

fn webhook_url(ctx: &mut Ctx<'_>, path: &str, v: &Value) -> Option<String> {
    let url = string(ctx, path, v)?;
    match check_webhook_url(&url) {
        Ok(()) => Some(url),
        Err(e) => {
            ctx.err(path, Some(v), e);
            None
        }
    }
}

/// A device id or a `prefix*` pattern (a webhook's device filter).
fn device_pattern(ctx: &mut Ctx<'_>, path: &str, v: &Value) -> Option<String> {
    let p = string(ctx, path, v)?;
    if let Err(e) = crate::events::bus::check_device_pattern(&p) {
        ctx.err(path, Some(v), e);
        return None;
    }
    Some(p)
}

fn event_name(ctx: &mut Ctx<'_>, path: &str, v: &Value) -> Option<String> {
    let event = string(ctx, path, v)?;
    if event == "*" || EventKind::parse(&event).is_some() {
        Some(event)
    } else {
        ctx.err(
            path,
            Some(v),
            format!(
                "unknown event {event:?} (expected \"*\" or one of {})",
                EventKind::ALL.map(EventKind::as_str).join(", ")
            ),
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse()
            .unwrap_or_else(|_| SocketAddr::from(([1, 1, 1, 1], 1)))
    }

    #[test]
    fn webhook_urls() {
        for good in [
            "http://127.0.0.1:9000/hook",
            "https://example.com",
            "HTTPS://user:pw@example.com:8443/a?b=c",
            "http://[::1]:80/x",
        ] {
            assert_eq!(check_webhook_url(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "ftp://example.com/",
            "http://",
            "http:///path",
            "http://host:99999/",
            "http://host:port/",
            "http://exa mple.com/",
            "http://[::1/x",
            "example.com/hook",
        ] {
            assert!(check_webhook_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn socket_clashes() {
        assert!(same_socket(addr("0.0.0.0:80"), addr("127.0.0.1:80")));
        assert!(same_socket(addr("127.0.0.1:80"), addr("127.0.0.1:80")));
        assert!(same_socket(addr("[::]:80"), addr("10.0.0.1:80")));
        assert!(!same_socket(addr("127.0.0.1:80"), addr("10.0.0.1:80")));
        assert!(!same_socket(addr("0.0.0.0:80"), addr("0.0.0.0:81")));
        // Port 0 lets the system choose, so never clashes (tests bind everything to :0).
        assert!(!same_socket(addr("127.0.0.1:0"), addr("127.0.0.1:0")));
    }
}
