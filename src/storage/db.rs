//! The database: one binary, three backends, chosen at run time by the URL's scheme.
//!
//! * `sqlite://data/dtu.db`, `sqlite:data/dtu.db`, `sqlite:///abs/path.db` — a file (its parent
//!   directory is created); `sqlite::memory:` — a private in-memory database (one connection).
//! * `postgres://…` / `postgresql://…` — libpq URL; `connect_timeout=5` is added if absent.
//! * `mysql://…` / `mariadb://…` — MariaDB or MySQL, with the `mysql` cargo feature only.
//!
//! Connections are a `diesel::MultiConnection` enum handed out by an r2d2 pool whose manager
//! picks the variant from the scheme (diesel's own `establish` tries each backend in turn, and
//! SQLite would accept any string). SQLite connections get `busy_timeout`, WAL,
//! `synchronous=NORMAL` and foreign keys on acquire. The embedded migrations of the chosen
//! backend run once, on a first connection, before the pool is built: a restart applies nothing.
//!
//! Everything here blocks: call it from a blocking thread, never on an async executor.

#[cfg(feature = "mysql")]
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::r2d2::R2D2Connection;
#[cfg(feature = "mysql")]
use diesel::MysqlConnection;
use diesel::{Connection, PgConnection, SqliteConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

pub use super::queries::{
    CommandRecord, DeliveryRecord, Enqueued, EventRecord, ExportCursor, PacketRecord,
    PrunableTable, QueuedCommand, RelayRecord, TelemetryQuery, TelemetryRecord, TokenRecord,
    WebhookRecord,
};

/// A connection to whichever backend the URL named. Only the portable SQL types work through
/// it (SmallInt, Integer, BigInt, Double, Float, Text, Date, Time, Timestamp, Nullable); batch
/// inserts and upserts run on the inner connection (see `queries.rs`).
#[cfg(not(feature = "mysql"))]
#[derive(diesel::MultiConnection)]
pub enum AnyConnection {
    Postgresql(PgConnection),
    Sqlite(SqliteConnection),
}

/// A connection to whichever backend the URL named. Only the portable SQL types work through
/// it (SmallInt, Integer, BigInt, Double, Float, Text, Date, Time, Timestamp, Nullable); batch
/// inserts and upserts run on the inner connection (see `queries.rs`).
#[cfg(feature = "mysql")]
#[derive(diesel::MultiConnection)]
pub enum AnyConnection {
    Postgresql(PgConnection),
    Sqlite(SqliteConnection),
    Mysql(MysqlConnection),
}

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
#[cfg(feature = "mysql")]
const MYSQL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/mysql");

/// How long a TCP connect to a database server may take before `connect` gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a pooled connection (the server being down included).
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long SQLite waits for another connection's write lock.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;

#[cfg(not(feature = "mysql"))]
const MYSQL_FEATURE_HELP: &str = "this binary was built without MariaDB/MySQL support: \
     rebuild with `cargo build --release --features mysql` \
     (needs the client library: `apt-get install default-libmysqlclient-dev`)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    Mysql,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Mysql => "mysql",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong. No message ever carries the password of the database URL.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The URL cannot be used (unknown scheme, backend not compiled in, malformed).
    #[error("database URL: {0}")]
    Url(String),
    /// The server (or file) could not be reached or opened, or no pooled connection was free.
    #[error("database connection: {0}")]
    Connect(String),
    /// The schema migrations failed.
    #[error("database migration: {0}")]
    Migration(String),
    /// A statement failed.
    #[error("database query: {0}")]
    Query(String),
    /// The blocking task running a call failed (it panicked, or the runtime is stopping).
    #[error("database task: {0}")]
    Task(String),
}

impl From<diesel::result::Error> for StorageError {
    fn from(e: diesel::result::Error) -> Self {
        StorageError::Query(e.to_string())
    }
}

/// Where a URL points, after parsing.
#[derive(Clone)]
enum Target {
    /// A file path, or `None` for a private in-memory database (the name of which is in
    /// `AnyManager::memory_name`).
    Sqlite(Option<String>),
    Postgres(String),
    #[cfg(feature = "mysql")]
    Mysql {
        url: String,
        /// host and port to probe with a bounded TCP connect first (libmysqlclient has no
        /// connect timeout through diesel); `None` for a Unix socket.
        probe: Option<(String, u16)>,
    },
}

impl Target {
    fn backend(&self) -> Backend {
        match self {
            Target::Sqlite(_) => Backend::Sqlite,
            Target::Postgres(_) => Backend::Postgres,
            #[cfg(feature = "mysql")]
            Target::Mysql { .. } => Backend::Mysql,
        }
    }
}

/// The r2d2 manager: opens the variant of `AnyConnection` that the URL's scheme names.
pub struct AnyManager {
    target: Target,
    /// What to scrub out of driver messages.
    secret: Option<String>,
    /// The URL with its password masked, for messages.
    shown: String,
    /// The URI of the shared-cache in-memory database for `sqlite::memory:`.
    memory_name: String,
}

impl AnyManager {
    fn scrub(&self, msg: String) -> String {
        scrub(msg, self.secret.as_deref())
    }
}

impl r2d2::ManageConnection for AnyManager {
    type Connection = AnyConnection;
    type Error = StorageError;

    fn connect(&self) -> Result<AnyConnection, StorageError> {
        let fail = |e: diesel::ConnectionError| {
            StorageError::Connect(self.scrub(format!("{}: {}", self.shown, e)))
        };
        match &self.target {
            Target::Sqlite(path) => {
                if let Some(path) = path {
                    if let Some(dir) = Path::new(path).parent() {
                        if !dir.as_os_str().is_empty() {
                            std::fs::create_dir_all(dir).map_err(|e| {
                                StorageError::Connect(format!(
                                    "cannot create directory {} for {}: {}",
                                    dir.display(),
                                    self.shown,
                                    e
                                ))
                            })?;
                        }
                    }
                }
                let name = path.as_deref().unwrap_or(&self.memory_name);
                SqliteConnection::establish(name)
                    .map(AnyConnection::Sqlite)
                    .map_err(fail)
            }
            Target::Postgres(url) => PgConnection::establish(url)
                .map(AnyConnection::Postgresql)
                .map_err(fail),
            #[cfg(feature = "mysql")]
            Target::Mysql { url, probe } => {
                if let Some((host, port)) = probe {
                    probe_tcp(host, *port)
                        .map_err(|e| StorageError::Connect(format!("{}: {}", self.shown, e)))?;
                }
                MysqlConnection::establish(url)
                    .map(AnyConnection::Mysql)
                    .map_err(fail)
            }
        }
    }

    fn is_valid(&self, conn: &mut AnyConnection) -> Result<(), StorageError> {
        conn.ping()
            .map_err(|e| StorageError::Connect(self.scrub(e.to_string())))
    }

    fn has_broken(&self, conn: &mut AnyConnection) -> bool {
        conn.is_broken()
    }
}

/// Per-connection settings, applied whenever the pool opens a connection: SQLite's PRAGMAs;
/// UTC as MySQL's session time zone, so that no server-side conversion ever shifts a stored
/// time (PostgreSQL: diesel already sets UTC, and `timestamp` columns ignore it anyway).
#[derive(Debug)]
struct SessionSetup;

impl SessionSetup {
    fn apply(conn: &mut AnyConnection) -> Result<(), StorageError> {
        let sql = match conn {
            AnyConnection::Sqlite(_) => format!(
                "PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; \
                 PRAGMA journal_mode = WAL; \
                 PRAGMA synchronous = NORMAL; \
                 PRAGMA foreign_keys = ON;"
            ),
            AnyConnection::Postgresql(_) => return Ok(()),
            #[cfg(feature = "mysql")]
            AnyConnection::Mysql(_) => "SET time_zone = '+00:00'".to_string(),
        };
        conn.batch_execute(&sql)
            .map_err(|e| StorageError::Connect(format!("session settings: {e}")))
    }
}

impl r2d2::CustomizeConnection<AnyConnection, StorageError> for SessionSetup {
    fn on_acquire(&self, conn: &mut AnyConnection) -> Result<(), StorageError> {
        SessionSetup::apply(conn)
    }
}

/// The connection pool of one database. Cheap to clone; every method blocks.
#[derive(Clone)]
pub struct Db {
    pub backend: Backend,
    pool: r2d2::Pool<AnyManager>,
    /// The URL with its password masked, and the password to scrub from driver messages.
    shown: Arc<(String, Option<String>)>,
    /// For `sqlite::memory:` only: the connection that keeps the database alive.
    _keeper: Option<Arc<Mutex<AnyConnection>>>,
    /// Serialises this process's offline-queue inserts, so that they never race for a
    /// device's next sequence number (other processes are handled by retrying).
    pub(super) enqueue_lock: Arc<Mutex<()>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("backend", &self.backend)
            .field("url", &self.shown.0)
            .finish()
    }
}

/// A pooled connection; derefs to `AnyConnection`.
pub type PooledConn = r2d2::PooledConnection<AnyManager>;

impl Db {
    /// Connects, runs pending migrations, builds the pool (pool_size connections at most; an
    /// in-memory SQLite database always has exactly one). Blocking; fails within a few seconds
    /// when the server is unreachable.
    pub fn connect(url: &str, pool_size: u32) -> Result<Db, StorageError> {
        let manager = parse_url(url)?;
        let backend = manager.target.backend();
        let shown = Arc::new((manager.shown.clone(), manager.secret.clone()));

        // A first connection of our own: a clear, fast error if the database is unreachable,
        // and the migrations run on it before anyone else gets a connection.
        let mut first = r2d2::ManageConnection::connect(&manager)?;
        SessionSetup::apply(&mut first)?;
        let applied = run_migrations(&mut first)
            .map_err(|e| StorageError::Migration(manager.scrub(e.to_string())))?;
        if applied > 0 {
            log::info!(
                "storage: {backend} database {}: applied {applied} migration(s)",
                manager.shown
            );
        }

        let builder = r2d2::Pool::builder()
            .error_handler(Box::new(QuietPoolErrors))
            .connection_customizer(Box::new(SessionSetup))
            .connection_timeout(CHECKOUT_TIMEOUT);
        let (pool, keeper) = match &manager.target {
            Target::Sqlite(None) => {
                // The named shared-cache database lives while one connection to it is open:
                // keep the migrated one for as long as the Db lives. One pooled connection,
                // because shared-cache locks do not wait on busy_timeout.
                let pool = builder
                    .max_size(1)
                    .min_idle(Some(0))
                    .build_unchecked(manager);
                (pool, Some(Arc::new(Mutex::new(first))))
            }
            _ => {
                drop(first);
                let pool = builder
                    .max_size(pool_size.max(1))
                    .min_idle(Some(1))
                    .build_unchecked(manager);
                (pool, None)
            }
        };
        Ok(Db {
            backend,
            pool,
            shown,
            _keeper: keeper,
            enqueue_lock: Arc::new(Mutex::new(())),
        })
    }

    /// A pooled connection, for queries that live outside this module (later tables).
    pub fn conn(&self) -> Result<PooledConn, StorageError> {
        self.pool.get().map_err(|e| {
            StorageError::Connect(format!(
                "no connection to {} within {:?}: {}",
                self.shown.0,
                CHECKOUT_TIMEOUT,
                scrub(e.to_string(), self.shown.1.as_deref())
            ))
        })
    }

    /// Runs a blocking call on a blocking thread, off the async threads: how every async
    /// caller reaches the database.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        F: FnOnce(&Db) -> Result<T, StorageError> + Send + 'static,
        T: Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))?
    }

    /// Cheap liveness probe (`SELECT 1`) for the writer's backoff. While the server is down it
    /// answers an error after at most the checkout timeout (5 s).
    pub fn ping(&self) -> Result<(), StorageError> {
        let mut conn = self.conn()?;
        conn.ping()
            .map_err(|e| StorageError::Connect(scrub(e.to_string(), self.shown.1.as_deref())))
    }
}

/// Runs the backend's pending embedded migrations; returns how many ran.
fn run_migrations(
    conn: &mut AnyConnection,
) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    let applied = match conn {
        AnyConnection::Sqlite(c) => c.run_pending_migrations(SQLITE_MIGRATIONS)?,
        AnyConnection::Postgresql(c) => c.run_pending_migrations(POSTGRES_MIGRATIONS)?,
        #[cfg(feature = "mysql")]
        AnyConnection::Mysql(c) => c.run_pending_migrations(MYSQL_MIGRATIONS)?,
    };
    Ok(applied.len())
}

/// Parses a database URL into a manager; the error never repeats the password.
fn parse_url(url: &str) -> Result<AnyManager, StorageError> {
    let url = url.trim();
    let secret = password_of(url);
    let shown = redact(url);
    let lower = url.to_ascii_lowercase();
    let target = if lower.starts_with("sqlite:") {
        let rest = &url["sqlite:".len()..];
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        if rest.is_empty() {
            return Err(StorageError::Url(format!(
                "{shown}: no file path after sqlite:"
            )));
        }
        if rest == ":memory:" {
            Target::Sqlite(None)
        } else {
            Target::Sqlite(Some(rest.to_string()))
        }
    } else if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
        let mut pg = url.to_string();
        if !lower.contains("connect_timeout=") {
            pg.push(if pg.contains('?') { '&' } else { '?' });
            pg.push_str(&format!("connect_timeout={}", CONNECT_TIMEOUT.as_secs()));
        }
        Target::Postgres(pg)
    } else if lower.starts_with("mysql://") || lower.starts_with("mariadb://") {
        mysql_target(url, &shown)?
    } else {
        // Only the scheme is repeated: the rest may hold a password in a form not parsed here.
        let scheme = url.split_once(':').map(|(s, _)| s).filter(|s| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        });
        let what = match scheme {
            Some(s) => format!("unsupported scheme {s:?}"),
            None => "no scheme".to_string(),
        };
        return Err(StorageError::Url(format!(
            "{what}: use sqlite:PATH, postgres://…, postgresql://…, mysql://… or mariadb://…"
        )));
    };
    static MEMORY_DBS: AtomicU64 = AtomicU64::new(0);
    let memory_name = format!(
        "file:dtu-memory-{}-{}?mode=memory&cache=shared",
        std::process::id(),
        MEMORY_DBS.fetch_add(1, Ordering::Relaxed)
    );
    Ok(AnyManager {
        target,
        secret,
        shown,
        memory_name,
    })
}

#[cfg(not(feature = "mysql"))]
fn mysql_target(_url: &str, shown: &str) -> Result<Target, StorageError> {
    Err(StorageError::Url(format!("{shown}: {MYSQL_FEATURE_HELP}")))
}

#[cfg(feature = "mysql")]
fn mysql_target(url: &str, shown: &str) -> Result<Target, StorageError> {
    let rest = match url.find("://") {
        Some(i) => &url[i + 3..],
        None => return Err(StorageError::Url(format!("{shown}: malformed URL"))),
    };
    let url = format!("mysql://{rest}");
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let hostport = match authority.rfind('@') {
        Some(i) => &authority[i + 1..],
        None => authority,
    };
    let (host, port) =
        split_host_port(hostport).ok_or_else(|| StorageError::Url(format!("{shown}: bad port")))?;
    let socket = rest.contains("unix_socket=");
    // libmysqlclient takes "localhost" (and no host) to mean the Unix socket.
    let probe = if socket || host.is_empty() || host.eq_ignore_ascii_case("localhost") {
        None
    } else {
        Some((host, port.unwrap_or(3306)))
    };
    Ok(Target::Mysql { url, probe })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
#[cfg(feature = "mysql")]
fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if let Some(v6) = s.strip_prefix('[') {
        let end = v6.find(']')?;
        let host = v6[..end].to_string();
        let after = &v6[end + 1..];
        return match after.strip_prefix(':') {
            Some(p) if !p.is_empty() => Some((host, Some(p.parse().ok()?))),
            _ => Some((host, None)),
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() => Some((h.to_string(), Some(p.parse().ok()?))),
        Some((h, _)) => Some((h.to_string(), None)),
        None => Some((s.to_string(), None)),
    }
}

/// A TCP connect bounded by `CONNECT_TIMEOUT`, tried on each resolved address.
#[cfg(feature = "mysql")]
fn probe_tcp(host: &str, port: u16) -> Result<(), String> {
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let mut last = format!("{host} resolves to no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("cannot reach {addr}: {e}"),
        }
    }
    Err(last)
}

/// The password in `scheme://user:password@host…` or a `password=` query parameter,
/// both as written and percent-decoded.
fn password_of(url: &str) -> Option<String> {
    let rest = &url[url.find("://")? + 3..];
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if let Some(at) = authority.rfind('@') {
        if let Some((_, pw)) = authority[..at].split_once(':') {
            if !pw.is_empty() {
                return Some(pw.to_string());
            }
        }
    }
    let query = rest.split_once('?')?.1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("password="))
        .filter(|pw| !pw.is_empty())
        .map(str::to_string)
}

/// The URL with any password replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some(pw) = password_of(url) else {
        return url.to_string();
    };
    scrub(url.to_string(), Some(&pw))
}

/// Removes every occurrence of the password (raw and percent-decoded) from a message.
fn scrub(msg: String, secret: Option<&str>) -> String {
    let Some(pw) = secret else { return msg };
    let mut out = msg.replace(pw, "***");
    let decoded = percent_decode(pw);
    if !decoded.is_empty() && decoded != pw {
        out = out.replace(&decoded, "***");
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hi = (bytes[i + 1] as char).to_digit(16);
            let lo = (bytes[i + 2] as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hi, lo) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            redact("postgres://dtu:s3cr%21t@db:5432/dtu"),
            "postgres://dtu:***@db:5432/dtu"
        );
        assert_eq!(
            redact("postgresql://db/dtu?user=dtu&password=pw1"),
            "postgresql://db/dtu?user=dtu&password=***"
        );
        assert_eq!(redact("mysql://root@db/dtu"), "mysql://root@db/dtu");
        assert_eq!(redact("sqlite://data/dtu.db"), "sqlite://data/dtu.db");
        assert_eq!(
            scrub("failed for s3cr!t".into(), Some("s3cr%21t")),
            "failed for ***"
        );
    }

    #[test]
    fn schemes_pick_the_backend() {
        let b = |url: &str| parse_url(url).map(|m| m.target.backend());
        assert!(matches!(b("sqlite://data/dtu.db"), Ok(Backend::Sqlite)));
        assert!(matches!(b("sqlite:dtu.db"), Ok(Backend::Sqlite)));
        assert!(matches!(b("SQLite::memory:"), Ok(Backend::Sqlite)));
        assert!(matches!(b("postgres://h/d"), Ok(Backend::Postgres)));
        assert!(matches!(b("postgresql://h/d"), Ok(Backend::Postgres)));
        assert!(matches!(b("sqlite:"), Err(StorageError::Url(_))));
        assert!(matches!(b("redis://h"), Err(StorageError::Url(_))));
        #[cfg(feature = "mysql")]
        assert!(matches!(b("mariadb://h/d"), Ok(Backend::Mysql)));
        #[cfg(not(feature = "mysql"))]
        assert!(matches!(b("mariadb://h/d"), Err(StorageError::Url(_))));
    }

    #[test]
    fn sqlite_paths() {
        let path = |url: &str| match parse_url(url).map(|m| m.target) {
            Ok(Target::Sqlite(p)) => p,
            _ => Some("not sqlite".into()),
        };
        assert_eq!(path("sqlite://data/dtu.db").as_deref(), Some("data/dtu.db"));
        assert_eq!(path("sqlite:data/dtu.db").as_deref(), Some("data/dtu.db"));
        assert_eq!(
            path("sqlite:///var/lib/dtu.db").as_deref(),
            Some("/var/lib/dtu.db")
        );
        assert_eq!(path("sqlite::memory:"), None);
        assert_eq!(path("sqlite://:memory:"), None);
    }

    #[test]
    fn postgres_gets_a_connect_timeout() {
        let url = |u: &str| match parse_url(u).map(|m| m.target) {
            Ok(Target::Postgres(u)) => u,
            _ => String::new(),
        };
        assert_eq!(url("postgres://h/d"), "postgres://h/d?connect_timeout=5");
        assert_eq!(
            url("postgres://h/d?sslmode=disable"),
            "postgres://h/d?sslmode=disable&connect_timeout=5"
        );
        assert_eq!(
            url("postgres://h/d?connect_timeout=2"),
            "postgres://h/d?connect_timeout=2"
        );
    }

    #[cfg(feature = "mysql")]
    #[test]
    fn mysql_urls() {
        let t = |u: &str| match parse_url(u).map(|m| m.target) {
            Ok(Target::Mysql { url, probe }) => (url, probe),
            _ => (String::new(), None),
        };
        assert_eq!(
            t("mariadb://u:p@db.example:3307/x"),
            (
                "mysql://u:p@db.example:3307/x".to_string(),
                Some(("db.example".to_string(), 3307))
            )
        );
        assert_eq!(t("mysql://u@[::1]/x").1, Some(("::1".to_string(), 3306)));
        assert_eq!(t("mysql://u@localhost/x").1, None);
        assert_eq!(t("mysql://u@h/x?unix_socket=/run/m.sock").1, None);
    }
}

/// r2d2 logs every failed background reconnect at error level, many a second during an
/// outage. The storage actor already logs an outage once (with this error) and its end, so
/// the pool's own reports go to debug.
#[derive(Debug)]
struct QuietPoolErrors;

impl<E: std::fmt::Display> r2d2::HandleError<E> for QuietPoolErrors {
    fn handle_error(&self, error: E) {
        log::debug!("database pool: {error}");
    }
}
