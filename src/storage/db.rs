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
//! `synchronous=NORMAL`, a `wal_autocheckpoint` of 10,000 pages and foreign keys on acquire.
//! The embedded migrations of the chosen backend run once, on a first connection, before the
//! pool is built: a restart applies nothing.
//!
//! Everything here blocks: call it from a blocking thread, or from async code through
//! [`Db::call`], never on an async executor.
//!
//! The queries of each table are in `repo/<table>.rs`, the batched write of rows in
//! `batch.rs`, what MariaDB/MySQL needs differently in `mysql.rs`; this file is the connection.

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

pub use super::error::StorageError;
use super::series::SeriesCache;
pub use super::url::Backend;
#[cfg(feature = "mysql")]
use super::url::CONNECT_TIMEOUT;
use super::url::{parse_url, scrub, DbUrl, Target};

// The records of every table, so that callers name one module whatever the table.
pub use super::repo::commands::QueuedCommand;
pub use super::repo::events::EventRecord;
pub use super::repo::packets::PacketRecord;
pub use super::repo::relay::{Enqueued, RelayRecord};
pub use super::repo::retention::PrunableTable;
pub use super::repo::telemetry::{ExportCursor, TelemetryQuery, TelemetryRecord};
pub use super::repo::tokens::TokenRecord;
pub use super::repo::webhooks::{DeliveryRecord, WebhookRecord};
pub use super::url::redact;

/// A connection to whichever backend the URL named. Only the portable SQL types work through
/// it (SmallInt, Integer, BigInt, Double, Float, Text, Date, Time, Timestamp, Nullable); batch
/// inserts and upserts run on the inner connection (see `on_inner!`).
#[cfg(not(feature = "mysql"))]
#[derive(diesel::MultiConnection)]
pub enum AnyConnection {
    Postgresql(PgConnection),
    Sqlite(SqliteConnection),
}

/// A connection to whichever backend the URL named. Only the portable SQL types work through
/// it (SmallInt, Integer, BigInt, Double, Float, Text, Date, Time, Timestamp, Nullable); batch
/// inserts and upserts run on the inner connection (see `on_inner!`).
#[cfg(feature = "mysql")]
#[derive(diesel::MultiConnection)]
pub enum AnyConnection {
    Postgresql(PgConnection),
    Sqlite(SqliteConnection),
    Mysql(MysqlConnection),
}

/// Runs a statement on whichever inner connection `AnyConnection` holds (what
/// `MultiConnection` cannot do itself: batch inserts, upserts). MySQL has a body of its own,
/// because its inserts must bind times as DATETIME (see `mysql.rs`).
macro_rules! on_inner {
    ($conn:expr, $c:ident => $body:expr, mysql $m:ident => $mysql:expr) => {
        match $conn {
            $crate::storage::db::AnyConnection::Postgresql($c) => $body,
            $crate::storage::db::AnyConnection::Sqlite($c) => $body,
            #[cfg(feature = "mysql")]
            $crate::storage::db::AnyConnection::Mysql($m) => $mysql,
        }
    };
}
pub(super) use on_inner;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
#[cfg(feature = "mysql")]
const MYSQL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/mysql");

/// How long a caller waits for a pooled connection (the server being down included).
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long SQLite waits for another connection's write lock.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;
/// WAL pages after which a commit checkpoints (SQLite's default is 1,000, 4 MiB). Telemetry is
/// stored by series, so a write touches one page per series and the next writes touch the same
/// pages again: a larger WAL (up to some 40 MiB) lets a checkpoint write each such page once for
/// several commits. With it a fleet of 10,000 series is written 1.6× faster (BENCHMARKS.md).
const SQLITE_WAL_CHECKPOINT_PAGES: u32 = 10_000;

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
    fn new(url: &str) -> Result<AnyManager, StorageError> {
        let DbUrl {
            target,
            secret,
            shown,
        } = parse_url(url)?;
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
                 PRAGMA wal_autocheckpoint = {SQLITE_WAL_CHECKPOINT_PAGES}; \
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
    /// Series ids by device and point, for the writes (`series.rs`).
    pub(super) series: Arc<SeriesCache>,
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
        let manager = AnyManager::new(url)?;
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
            series: Arc::new(SeriesCache::default()),
        })
    }

    /// A pooled connection: what the queries of `repo/` and `batch.rs` run on.
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

    /// Runs `f` on tokio's blocking pool, so that no async thread waits for the database: how
    /// async code calls any method of `Db`. A panic in `f` becomes [`StorageError::Task`].
    pub async fn call<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        F: FnOnce(&Db) -> Result<T, StorageError> + Send + 'static,
        T: Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || f(&db)).await?
    }

    /// Cheap liveness probe (`SELECT 1`) for the writer's backoff. While the server is down it
    /// answers an error after at most the checkout timeout (5 s).
    pub fn ping(&self) -> Result<(), StorageError> {
        let mut conn = self.conn()?;
        conn.ping()
            .map_err(|e| StorageError::Connect(scrub(e.to_string(), self.shown.1.as_deref())))
    }
}

/// Runs `f` in a transaction that writes. On SQLite it begins as `BEGIN IMMEDIATE`: a
/// deferred transaction that reads first (a batch looking up its series) could not turn into a
/// writer once another connection had committed since its read (`SQLITE_BUSY` at once, without
/// waiting for `busy_timeout`); taking the write lock first makes writers queue instead.
pub(super) fn write_transaction<T>(
    conn: &mut AnyConnection,
    f: impl FnOnce(&mut AnyConnection) -> diesel::QueryResult<T>,
) -> diesel::QueryResult<T> {
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    let AnyConnection::Sqlite(c) = conn else {
        return conn.transaction(f);
    };
    AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE")?;
    // The inner connection's transaction state is what `AnyConnection`'s manager reads.
    type Manager = <AnyConnection as Connection>::TransactionManager;
    match f(conn) {
        Ok(value) => {
            Manager::commit_transaction(conn)?;
            Ok(value)
        }
        Err(e) => {
            Manager::rollback_transaction(conn)?;
            Err(e)
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn call_runs_off_the_async_threads_and_answers() {
        let db = Db::connect("sqlite::memory:", 1).expect("in-memory database");
        let here = std::thread::current().id();
        let (n, there) = db
            .call(|db| Ok((db.count_telemetry(None)?, std::thread::current().id())))
            .await
            .expect("answer");
        assert_eq!(n, 0);
        assert_ne!(here, there, "ran on the caller's thread");
    }

    #[actix_rt::test]
    async fn a_panicking_call_is_a_task_error() {
        let db = Db::connect("sqlite::memory:", 1).expect("in-memory database");
        let result: Result<(), _> = db.call(|_| panic!("boom")).await;
        assert!(matches!(result, Err(StorageError::Task(_))), "{result:?}");
    }
}
