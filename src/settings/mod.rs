//! Settings: `server.toml` (how the server runs) and `data.toml` (how device data is parsed),
//! as described in section 2 of the contract.
//!
//! Loading merges, with the `config` crate, the built-in server defaults, the server file and
//! `DTU__SECTION__KEY` environment overrides (the data file has no overrides), then walks the
//! merged tree by hand so that *every* problem is reported with its file and key path, not just
//! the first one. Bad settings never start a half-working server.
//!
//! Environment overrides: `DTU__WEB__BIND=0.0.0.0:9090` sets `web.bind`. A numeric segment
//! indexes an array, so `DTU__LISTENERS__0__BIND=0.0.0.0:4000` changes the first listener's
//! bind. `DTU_SETTINGS` (one underscore) is the command line's settings directory, not a setting.

mod data;
mod server;
mod tree;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use config::{Config, ConfigError, Environment, File, FileFormat, Map, Source, Value};

use crate::events::rules::Rule;
use crate::events::webhooks::{WebhookDeliverySettings, WebhookSettings};
use crate::protocol::dlt645;
use crate::protocol::link::{Heartbeat, Registration};
use crate::protocol::points::Point;
use crate::protocol::Protocol;
use crate::storage::packet_log::{PacketMode, RECENT_DEFAULT};
use crate::storage::StorageSettings;
pub use data::{MAX_READ_BITS, MAX_READ_REGISTERS, MAX_WRITE_REGISTERS};
use tree::{Ctx, EnvVars, ORIGIN_DEFAULTS, ORIGIN_FILE};

/// Both settings files, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The settings directory they were read from.
    pub dir: PathBuf,
    pub server: ServerSettings,
    pub data: DataSettings,
}

/// One problem in the settings. `file` is the file name (e.g. `data.toml`), or `env VAR` for an
/// environment override; `key` is the full key path (e.g. `profiles.default.points[2].address`),
/// empty for a problem with the whole file.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingsError {
    pub file: String,
    pub key: String,
    pub message: String,
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.message)
        }
    }
}

impl std::error::Error for SettingsError {}

/// server.toml: how the server runs. Every key has a default (see [`ServerSettings::default`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub web: WebSettings,
    pub listeners: Vec<ListenerSettings>,
    pub liveness: LivenessSettings,
    pub database: DatabaseSettings,
    pub storage: StorageSettings,
    pub auth: AuthSettings,
    pub webhooks: Vec<WebhookSettings>,
    pub webhook_delivery: WebhookDeliverySettings,
    pub relay: RelaySettings,
    /// `[limits]`: connections the device listeners take.
    pub limits: LimitSettings,
}

/// The `$TTMS` relay (listeners with protocol `ttms`).
#[derive(Debug, Clone, PartialEq)]
pub struct RelaySettings {
    /// Frames held in `relay_queue` for one offline terminal; more are refused (logged and
    /// dropped). At least 1.
    pub max_queue: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WebSettings {
    pub bind: SocketAddr,
    /// Whether `GET /metrics` needs a token (any role) like the API. Off by default:
    /// Prometheus scrapers usually send none, and the numbers name no device.
    pub metrics_token: bool,
    /// Events held for one `/api/stream` client that reads too slowly; when its queue
    /// overflows the client is disconnected. At least 1.
    pub stream_queue: usize,
}

/// One TCP port for one device protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerSettings {
    pub name: String,
    pub bind: SocketAddr,
    pub protocol: Protocol,
    /// A profile of data.toml; required for framed and transparent, unused by ttms.
    pub profile: Option<String>,
}

/// `[limits]`: what the device listeners take (`conn/limits.rs` applies them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSettings {
    /// Connections open at once over every device listener; 0: as many as the process may
    /// open files, less a reserve for the database, the spool and the web port
    /// (`conn::limits::max_connections`).
    pub max_connections: usize,
    /// Connections open at once from one source address. DTUs of one carrier often share a
    /// few addresses (carrier-grade NAT), so the default is generous.
    pub max_per_address: usize,
    /// Connections that have not registered yet, at once.
    pub max_unregistered: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            max_connections: 0,
            max_per_address: 5_000,
            max_unregistered: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LivenessSettings {
    /// What devices are configured to send.
    pub heartbeat_interval: Duration,
    /// Silent for `heartbeat_interval * max_missed` => offline. At least 1.
    pub max_missed: u32,
    /// A connection that has not registered by then is closed.
    pub register_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseSettings {
    /// `sqlite:…`, `mysql://…` (or `mariadb://…`), `postgres://…` (or `postgresql://…`).
    pub url: String,
    /// At least 1.
    pub pool_size: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuthSettings {
    /// Empty: generate one at first start.
    pub admin_token: String,
}

impl Default for ServerSettings {
    /// The contract's defaults, the same as [`DEFAULT_SERVER_TOML`].
    fn default() -> Self {
        ServerSettings {
            web: WebSettings {
                bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
                metrics_token: false,
                stream_queue: 256,
            },
            listeners: vec![ListenerSettings {
                name: "framed".into(),
                bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 22334)),
                protocol: Protocol::of(&crate::protocol::framed::PROTOCOL),
                profile: Some("default".into()),
            }],
            liveness: LivenessSettings {
                heartbeat_interval: Duration::from_secs(30),
                max_missed: 3,
                register_timeout: Duration::from_secs(10),
            },
            database: DatabaseSettings {
                url: "sqlite://data/dtu.db".into(),
                pool_size: 8,
            },
            storage: StorageSettings {
                batch_size: 1000,
                flush_interval: Duration::from_secs(1),
                max_buffer: 200_000,
                store_heartbeats: true,
                spool_path: PathBuf::from("data/spool.jsonl"),
                // 2 GiB: about 13 million rows, an hour's outage at 3,600 rows/s.
                max_spool: 2 << 30,
                warn_lag: Duration::from_secs(30),
                retention_telemetry: None,
                retention_packets: Some(Duration::from_secs(30 * 86_400)),
                retention_deliveries: Some(Duration::from_secs(7 * 86_400)),
                packets: PacketMode::All,
                recent_packets: RECENT_DEFAULT,
            },
            auth: AuthSettings {
                admin_token: String::new(),
            },
            webhooks: Vec::new(),
            webhook_delivery: WebhookDeliverySettings {
                timeout: Duration::from_secs(10),
                max_attempts: 5,
                backoff_initial: Duration::from_secs(1),
                backoff_max: Duration::from_secs(60),
                pause_after: 3,
                pause_for: Duration::from_secs(60),
                queue: 10_000,
                batch_max: 100,
            },
            relay: RelaySettings { max_queue: 10_000 },
            limits: LimitSettings::default(),
        }
    }
}

/// The defaults as the bottom layer of the merge, so that a file or an environment variable
/// only has to name what it changes. Kept equal to [`ServerSettings::default`] by a test.
pub const DEFAULT_SERVER_TOML: &str = r#"
webhooks = []

[web]
bind = "127.0.0.1:8080"
metrics_token = false
stream_queue = 256

[[listeners]]
name = "framed"
bind = "0.0.0.0:22334"
protocol = "framed"
profile = "default"

[liveness]
heartbeat_interval = "30s"
max_missed = 3
register_timeout = "10s"

[database]
url = "sqlite://data/dtu.db"
pool_size = 8

[storage]
batch_size = 1000
flush_interval = "1s"
max_buffer = 200000
store_heartbeats = true
spool_path = "data/spool.jsonl"
max_spool = "2GiB"
warn_lag = "30s"
retention_telemetry = "forever"
retention_packets = "30d"
retention_deliveries = "7d"

[auth]
admin_token = ""

[webhook_delivery]
timeout = "10s"
max_attempts = 5
backoff_initial = "1s"
backoff_max = "60s"
pause_after = 3
pause_for = "60s"
queue = 10000
batch_max = 100

[relay]
max_queue = 10000

[limits]
max_connections = 0
max_per_address = 5000
max_unregistered = 10000
"#;

/// data.toml: the profiles, by name (case kept).
#[derive(Debug, Clone, Default)]
pub struct DataSettings {
    pub profiles: BTreeMap<String, Arc<Profile>>,
}

/// How to talk to and decode one kind of device.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    /// Modbus slave address, 1..=247 (default 1).
    pub slave: u8,
    /// How long to wait for a Modbus answer (default 2s).
    pub response_timeout: Duration,
    /// Extra attempts after a timeout (default 1).
    pub retries: u32,
    pub polls: Vec<Poll>,
    pub points: Vec<Point>,
    pub commands: Vec<NamedCommand>,
    pub rules: Vec<Rule>,
    /// Several slaves on the DTU's RS-485 bus, each a device of its own polled with its own
    /// profile; empty: the DTU polls its one slave with this profile.
    pub units: Vec<Unit>,
    /// Polls in a row a unit may leave unanswered before it is offline (`no_response`).
    pub max_failed: u32,
    /// How a DTU registers where its protocol leaves that to the profile (transparent).
    pub registration: Option<Registration>,
    /// What such a DTU's heartbeat looks like.
    pub heartbeat: Option<Heartbeat>,
    /// What the slave speaks (`modbus = "rtu" | "tcp"`, `meter = "dlt645"`): how its polls
    /// and commands go on the wire.
    pub meter: Meter,
}

/// What a profile's slave speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Meter {
    /// Modbus RTU: slave address, PDU, CRC (the default).
    #[default]
    ModbusRtu,
    /// Modbus TCP (`modbus = "tcp"`): the MBAP header with the slave as unit id, no CRC.
    ModbusTcp,
    /// A DL/T 645-2007 meter (`meter = "dlt645"`) at this address; None: `address = "auto"`,
    /// read once per connection with the broadcast address.
    Dlt645(Option<dlt645::Address>),
}

impl Profile {
    pub fn point(&self, name: &str) -> Option<&Point> {
        self.points.iter().find(|p| p.name == name)
    }

    pub fn command(&self, name: &str) -> Option<&NamedCommand> {
        self.commands.iter().find(|c| c.name == name)
    }
}

/// One slave on a DTU's bus: a device `<dtu id>.<slave>` polled with `profile`.
#[derive(Debug, Clone)]
pub struct Unit {
    pub slave: u8,
    pub profile: Arc<Profile>,
    /// For a DL/T 645 meter: its address on the bus, if the unit names it (else its
    /// profile's).
    pub address: Option<dlt645::Address>,
}

/// One read on a schedule: a Modbus block (`[[polls]]`), or for a DL/T 645 meter one data
/// identifier (each `[[points]]` entry is its own poll, named like the point).
#[derive(Debug, Clone)]
pub struct Poll {
    pub name: String,
    pub trigger: PollTrigger,
    pub read: PollRead,
}

/// What a poll reads.
#[derive(Debug, Clone, PartialEq)]
pub enum PollRead {
    Block(Block),
    /// One DL/T 645 data identifier, decoded with `format` into the point named like the
    /// poll, in `unit`.
    Dlt645 {
        di: dlt645::Di,
        format: dlt645::formats::Format,
        unit: String,
    },
}

impl Poll {
    /// The Modbus block it reads, if it reads one.
    pub fn block(&self) -> Option<Block> {
        match self.read {
            PollRead::Block(block) => Some(block),
            PollRead::Dlt645 { .. } => None,
        }
    }
}

/// One block read: `count` coils/inputs/registers from `start` with Modbus `function` 1..=4.
/// Validated: count within the Modbus limit and the block ends at or below address 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub function: u8,
    pub start: u16,
    pub count: u16,
}

impl Block {
    /// Last address read (inclusive).
    pub fn end(&self) -> u16 {
        self.start.saturating_add(self.count.saturating_sub(1))
    }

    /// Whether this block is registers (functions 3 and 4) rather than bits.
    pub fn reads_registers(&self) -> bool {
        matches!(self.function, 3 | 4)
    }
}

/// When a poll runs.
#[derive(Debug, Clone, PartialEq)]
pub enum PollTrigger {
    /// On a timer (`every = "30s"`).
    Every(Duration),
    /// Each time the device's heartbeat arrives (`trigger = "heartbeat"`).
    Heartbeat,
    /// Never sent by the server: the DTU polls its meter itself and sends the answers up
    /// unasked (`trigger = "passive"`); an answer that fits this poll (slave, function, byte
    /// count) is decoded and stored like any other.
    Passive,
}

/// A command callable by name through the API.
#[derive(Debug, Clone)]
pub struct NamedCommand {
    pub name: String,
    pub write: WriteSpec,
    pub require: Option<Require>,
}

/// What a named command writes. In the file: `{ address, value }` (a negative value down to
/// -32768 is written as its 16-bit two's complement), `{ address, values = [..] }` (1..=123
/// registers) or `{ address, coil = true }`.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteSpec {
    Register { address: u16, value: u16 },
    Registers { address: u16, values: Vec<u16> },
    Coil { address: u16, value: bool },
}

/// A precondition: the point's latest value must equal `equals`, else the command is refused
/// with `message` (default: "`<point>` must equal `<equals>`").
#[derive(Debug, Clone, PartialEq)]
pub struct Require {
    pub point: String,
    pub equals: f64,
    pub message: String,
}

/// Parses a duration such as "500ms", "30s", "5m" or "7d".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("{s:?} is not a duration like \"500ms\", \"30s\", \"5m\" or \"7d\": {e}")
    })
}

/// Reads and validates `dir/server.*` (with `DTU__…` environment overrides) and `dir/data.*`.
/// A missing server file means all defaults; a missing data file is an error. On failure,
/// every problem found is returned.
pub fn load(dir: &Path) -> Result<Settings, Vec<SettingsError>> {
    load_with_env(dir, std::env::vars_os())
}

/// [`load`] with the environment given, so tests need not touch the process environment.
pub(crate) fn load_with_env(
    dir: &Path,
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Settings, Vec<SettingsError>> {
    let mut server_errors = Vec::new();
    let mut data_errors = Vec::new();
    let (env, env_source) = collect_env(vars, &mut server_errors);
    let no_env = EnvVars::default();

    // data.toml first: the server's listeners refer to its profiles.
    let data_file = find_file(dir, "data", &mut data_errors);
    let data_label = data_file
        .as_ref()
        .map_or_else(|| "data.toml".to_string(), |f| f.label.clone());
    let mut data_ctx = Ctx::new(&data_label, &no_env);
    let mut data_result = None;
    match data_file {
        None => {
            if data_errors.is_empty() {
                data_errors.push(SettingsError {
                    file: data_label.clone(),
                    key: String::new(),
                    message: format!(
                        "not found in {} (data.toml, data.yaml or data.yml is required)",
                        dir.display()
                    ),
                });
            }
        }
        Some(file) => {
            let tree = file
                .read(&mut data_errors)
                .and_then(|layer| merge(vec![Box::new(layer)], &file.label, &mut data_errors));
            if let Some(tree) = tree {
                data_result = Some(data::validate(&mut data_ctx, &tree));
            }
        }
    }

    let before = server_errors.len();
    let server_file = find_file(dir, "server", &mut server_errors);
    // With two server files there is no telling which was meant: check neither.
    let mut readable = server_errors.len() == before;
    let server_label = server_file
        .as_ref()
        .map_or_else(|| "server.toml".to_string(), |f| f.label.clone());
    let mut server_ctx = Ctx::new(&server_label, &env);
    let mut server_result = None;
    let mut layers: Vec<Box<dyn Source + Send + Sync>> = Vec::new();
    if let Some(defaults) = parse_layer(DEFAULT_SERVER_TOML, FileFormat::Toml, ORIGIN_DEFAULTS) {
        layers.push(Box::new(defaults));
    }
    if let Some(file) = &server_file {
        match file.read(&mut server_errors) {
            Some(layer) => layers.push(Box::new(layer)),
            None => readable = false,
        }
    }
    if readable {
        let environment = Environment::with_prefix("DTU")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(env_source));
        layers.push(Box::new(environment));
        if let Some(tree) = merge(layers, &server_label, &mut server_errors) {
            let profiles = data_result.as_ref().map(|(_, info)| info);
            server_result = Some(server::validate(&mut server_ctx, &tree, profiles));
        }
    }

    server_errors.append(&mut server_ctx.errors);
    data_errors.append(&mut data_ctx.errors);
    server_errors.append(&mut data_errors);
    match (server_result, data_result) {
        (Some(server), Some((data, _))) if server_errors.is_empty() => Ok(Settings {
            dir: dir.to_path_buf(),
            server,
            data,
        }),
        _ => Err(server_errors),
    }
}

/// A settings file found on disk.
struct FoundFile {
    path: PathBuf,
    label: String,
    format: FileFormat,
}

impl FoundFile {
    /// Reads and parses the file into a layer whose values are tagged as coming from it.
    fn read(&self, errors: &mut Vec<SettingsError>) -> Option<Layer> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(file_error(
                    &self.label,
                    format!("cannot read {}: {e}", self.path.display()),
                ));
                return None;
            }
        };
        match File::from_str(&text, self.format).collect() {
            Ok(map) => Some(Layer(retag(map, ORIGIN_FILE))),
            Err(e) => {
                errors.push(file_error(&self.label, parse_message(&e)));
                None
            }
        }
    }
}

fn file_error(file: &str, message: String) -> SettingsError {
    SettingsError {
        file: file.to_string(),
        key: String::new(),
        message,
    }
}

/// A parse error as one readable message.
fn parse_message(e: &ConfigError) -> String {
    e.to_string().trim_end().to_string()
}

/// `stem.toml`, `stem.yaml` or `stem.yml` in `dir`; more than one of them is an error.
fn find_file(dir: &Path, stem: &str, errors: &mut Vec<SettingsError>) -> Option<FoundFile> {
    let found: Vec<FoundFile> = [
        ("toml", FileFormat::Toml),
        ("yaml", FileFormat::Yaml),
        ("yml", FileFormat::Yaml),
    ]
    .into_iter()
    .map(|(ext, format)| {
        let label = format!("{stem}.{ext}");
        FoundFile {
            path: dir.join(&label),
            label,
            format,
        }
    })
    .filter(|f| f.path.exists())
    .collect();
    if found.len() > 1 {
        let names: Vec<&str> = found.iter().map(|f| f.label.as_str()).collect();
        errors.push(file_error(
            names[0],
            format!(
                "{} all exist in {}; keep only one",
                names.join(", "),
                dir.display()
            ),
        ));
        return None;
    }
    found.into_iter().next()
}

/// One parsed source for the merge.
#[derive(Debug, Clone)]
struct Layer(Map<String, Value>);

impl Source for Layer {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, ConfigError> {
        Ok(self.0.clone())
    }
}

fn parse_layer(text: &str, format: FileFormat, origin: &str) -> Option<Layer> {
    File::from_str(text, format)
        .collect()
        .ok()
        .map(|map| Layer(retag(map, origin)))
}

fn retag(map: Map<String, Value>, origin: &str) -> Map<String, Value> {
    map.into_iter()
        .map(|(k, v)| (k, tree::tag(v, origin)))
        .collect()
}

/// Merges the layers, later ones winning, into one tree.
fn merge(
    layers: Vec<Box<dyn Source + Send + Sync>>,
    label: &str,
    errors: &mut Vec<SettingsError>,
) -> Option<Value> {
    // The layers go in as one source: a Vec of sources collects them in order, later winning.
    match Config::builder().add_source(layers).build() {
        Ok(config) => Some(config.cache),
        Err(e) => {
            errors.push(file_error(label, parse_message(&e)));
            None
        }
    }
}

/// Picks the `DTU__…` variables: returns them by key path (for error messages) and as the
/// source map for `config::Environment`, with numeric segments turned into array indexes
/// (`DTU__LISTENERS__0__BIND` → `listeners[0].bind`).
fn collect_env(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    errors: &mut Vec<SettingsError>,
) -> (EnvVars, Map<String, String>) {
    let mut env = EnvVars::default();
    let mut source = Map::new();
    for (name, value) in vars {
        let Ok(name) = name.into_string() else {
            continue;
        };
        let Some(rest) = name
            .get(..5)
            .filter(|p| p.eq_ignore_ascii_case("DTU__"))
            .and_then(|_| name.get(5..))
        else {
            continue;
        };
        let Ok(value) = value.into_string() else {
            errors.push(file_error(
                &format!("env {name}"),
                "is not valid UTF-8".into(),
            ));
            continue;
        };
        let mut key = String::new();
        for segment in rest.split("__") {
            match segment.parse::<usize>() {
                Ok(index) if !key.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) => {
                    key.push_str(&format!("[{index}]"));
                }
                _ => {
                    if !key.is_empty() {
                        key.push_str("__");
                    }
                    key.push_str(segment);
                }
            }
        }
        let path = key.to_lowercase().replace("__", ".");
        env.by_path.insert(path, (name.clone(), value.clone()));
        source.insert(format!("DTU__{key}"), value);
    }
    (env, source)
}

#[cfg(test)]
mod broken_tests;
#[cfg(test)]
mod tests;
