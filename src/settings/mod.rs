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
use crate::protocol::link::{Heartbeat, Registration};
use crate::protocol::points::Point;
use crate::protocol::Protocol;
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
pub struct StorageSettings {
    /// Rows per write; at least 1.
    pub batch_size: usize,
    /// Longest a row waits in memory.
    pub flush_interval: Duration,
    /// Rows held while the database is unreachable; at least 1.
    pub max_buffer: usize,
    pub store_heartbeats: bool,
    /// Where rows go while the database is unreachable and the buffer is full.
    pub spool_path: PathBuf,
    /// Telemetry older than this is deleted; None keeps it for good ("forever").
    pub retention_telemetry: Option<Duration>,
    /// Raw packets older than this are deleted; None keeps them for good.
    pub retention_packets: Option<Duration>,
    /// Webhook delivery attempts older than this are deleted; None keeps them for good.
    pub retention_deliveries: Option<Duration>,
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
                retention_telemetry: None,
                retention_packets: Some(Duration::from_secs(30 * 86_400)),
                retention_deliveries: Some(Duration::from_secs(7 * 86_400)),
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
    /// How a DTU registers where its protocol leaves that to the profile (transparent).
    pub registration: Option<Registration>,
    /// What such a DTU's heartbeat looks like.
    pub heartbeat: Option<Heartbeat>,
}

impl Profile {
    pub fn point(&self, name: &str) -> Option<&Point> {
        self.points.iter().find(|p| p.name == name)
    }

    pub fn command(&self, name: &str) -> Option<&NamedCommand> {
        self.commands.iter().find(|c| c.name == name)
    }
}

/// One block read: `count` coils/inputs/registers from `start` with Modbus `function` 1..=4.
/// Validated: count within the Modbus limit and the block ends at or below address 65535.
#[derive(Debug, Clone)]
pub struct Poll {
    pub name: String,
    pub function: u8,
    pub start: u16,
    pub count: u16,
    pub trigger: PollTrigger,
}

impl Poll {
    /// Last address read (inclusive).
    pub fn end(&self) -> u16 {
        self.start.saturating_add(self.count.saturating_sub(1))
    }

    /// Whether this poll reads registers (functions 3 and 4) rather than bits.
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
/// with `message` (default: "<point> must equal <equals>").
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
mod tests {
    use super::*;
    use crate::protocol::points::{PointType, WordOrder};

    /// A small valid data file with the profiles the default listener and YAML tests need.
    const DATA_TOML: &str = r#"
[profiles.default]
[[profiles.default.polls]]
name = "block"
function = 3
start = 0
count = 10
every = "5s"
[[profiles.default.points]]
name = "Temperature"
address = 0
type = "i16"
scale = 0.1

[profiles.usr-meter]
slave = 7
registration = { pattern = "^[0-9]{15}$" }
heartbeat = { hex = "FE 01" }
"#;

    fn no_env() -> Vec<(OsString, OsString)> {
        Vec::new()
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write settings file");
        }
        dir
    }

    fn load_ok(dir: &Path, vars: Vec<(OsString, OsString)>) -> Settings {
        match load_with_env(dir, vars) {
            Ok(s) => s,
            Err(errors) => {
                let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
                panic!("settings did not load:\n{}", lines.join("\n"));
            }
        }
    }

    fn load_err(dir: &Path, vars: Vec<(OsString, OsString)>) -> Vec<SettingsError> {
        match load_with_env(dir, vars) {
            Ok(_) => panic!("settings loaded but should not"),
            Err(errors) => errors,
        }
    }

    #[test]
    fn missing_server_file_means_defaults() {
        let dir = dir_with(&[("data.toml", DATA_TOML)]);
        let s = load_ok(dir.path(), no_env());
        assert_eq!(s.server, ServerSettings::default());
        assert_eq!(s.dir, dir.path());
        assert_eq!(s.server.web.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(s.server.listeners[0].bind.to_string(), "0.0.0.0:22334");
        assert_eq!(s.server.database.url, "sqlite://data/dtu.db");
        assert_eq!(s.server.storage.max_buffer, 200_000);
    }

    #[test]
    fn empty_server_file_means_defaults_and_keys_default_one_by_one() {
        let dir = dir_with(&[("data.toml", DATA_TOML), ("server.toml", "")]);
        assert_eq!(
            load_ok(dir.path(), no_env()).server,
            ServerSettings::default()
        );
        let partial = "[storage]\nbatch_size = 10\n[liveness]\nmax_missed = 5\n";
        let dir = dir_with(&[("data.toml", DATA_TOML), ("server.toml", partial)]);
        let s = load_ok(dir.path(), no_env()).server;
        assert_eq!(s.storage.batch_size, 10);
        assert_eq!(s.storage.flush_interval, Duration::from_secs(1));
        assert_eq!(s.liveness.max_missed, 5);
        assert_eq!(s.liveness.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(s.listeners, ServerSettings::default().listeners);
    }

    #[test]
    fn profile_defaults_and_case() {
        let dir = dir_with(&[("data.toml", DATA_TOML)]);
        let s = load_ok(dir.path(), no_env());
        let names: Vec<&str> = s.data.profiles.keys().map(String::as_str).collect();
        assert_eq!(names, ["default", "usr-meter"]);
        let p = &s.data.profiles["default"];
        assert_eq!(p.name, "default");
        assert_eq!(
            (p.slave, p.response_timeout, p.retries),
            (1, Duration::from_secs(2), 1)
        );
        let t = p.point("Temperature").expect("case kept");
        assert!(p.point("temperature").is_none());
        assert_eq!(
            (t.scale, t.offset, t.unit.as_str(), t.order),
            (0.1, 0.0, "", WordOrder::Abcd)
        );
        assert_eq!(
            p.polls[0].trigger,
            PollTrigger::Every(Duration::from_secs(5))
        );
        let u = &s.data.profiles["usr-meter"];
        assert_eq!(u.slave, 7);
        let reg = u.registration.as_ref().expect("registration");
        assert_eq!(reg.format, crate::protocol::link::IdFormat::Ascii);
        assert!(reg.reply.is_empty());
        assert!(
            matches!(&reg.matcher, crate::protocol::link::IdMatcher::Pattern(r) if r.is_match("861234567890123"))
        );
        let hb = u.heartbeat.as_ref().expect("heartbeat");
        assert_eq!(hb.bytes, [0xFE, 0x01]);
    }

    #[test]
    fn missing_data_file_is_an_error() {
        let dir = dir_with(&[]);
        let errors = load_err(dir.path(), no_env());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].file, "data.toml");
        assert_eq!(errors[0].key, "");
        assert!(errors[0].message.contains("not found"));
    }

    #[test]
    fn yaml_variant() {
        let server = r#"
web:
  bind: "127.0.0.1:18080"
listeners:
  - name: meters
    bind: "0.0.0.0:4000"
    protocol: transparent
    profile: usr-meter
  - name: relay
    bind: "0.0.0.0:4001"
    protocol: ttms
liveness:
  heartbeat_interval: 1m
webhooks:
  - url: "https://example.com/hook"
    events: ["*"]
"#;
        let data = r#"
profiles:
  usr-meter:
    registration:
      format: hex
      length: 4
      reply: "01"
    polls:
      - { name: coils, function: 1, start: 0, count: 16, trigger: heartbeat }
    points:
      - { name: Door, address: 3, type: bool }
"#;
        let dir = dir_with(&[("server.yaml", server), ("data.yml", data)]);
        let s = load_ok(dir.path(), no_env());
        assert_eq!(s.server.web.bind.to_string(), "127.0.0.1:18080");
        assert_eq!(s.server.listeners.len(), 2);
        assert_eq!(
            s.server.listeners[0].protocol,
            Protocol::by_name("transparent").unwrap()
        );
        assert_eq!(s.server.listeners[0].profile.as_deref(), Some("usr-meter"));
        assert_eq!(s.server.listeners[1].profile, None);
        assert_eq!(
            s.server.liveness.heartbeat_interval,
            Duration::from_secs(60)
        );
        assert_eq!(s.server.liveness.max_missed, 3);
        assert_eq!(s.server.webhooks[0].events, ["*"]);
        assert_eq!(s.server.webhooks[0].secret, None);
        let p = &s.data.profiles["usr-meter"];
        let reg = p.registration.as_ref().expect("registration");
        assert_eq!(reg.format, crate::protocol::link::IdFormat::Hex);
        assert!(matches!(
            reg.matcher,
            crate::protocol::link::IdMatcher::Length(4)
        ));
        assert_eq!(reg.reply, [1]);
        assert_eq!(p.polls[0].trigger, PollTrigger::Heartbeat);
        assert!(p.point("Door").is_some());
    }

    #[test]
    fn two_files_of_one_stem_are_an_error() {
        let dir = dir_with(&[
            ("data.toml", DATA_TOML),
            ("server.toml", ""),
            ("server.yml", ""),
        ]);
        let errors = load_err(dir.path(), no_env());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].file, "server.toml");
        assert!(errors[0].message.contains("keep only one"));
    }

    #[test]
    fn syntax_errors_name_the_file_and_both_files_are_checked() {
        let dir = dir_with(&[
            ("data.toml", "[profiles\n"),
            ("server.toml", "[web]\nbind = \n"),
        ]);
        let errors = load_err(dir.path(), no_env());
        let files: Vec<&str> = errors.iter().map(|e| e.file.as_str()).collect();
        assert_eq!(files, ["server.toml", "data.toml"], "{errors:?}");
        assert!(errors.iter().all(|e| e.key.is_empty()));
        assert!(errors[0].to_string().starts_with("server.toml: "));
    }

    #[test]
    fn environment_overrides() {
        let dir = dir_with(&[
            ("data.toml", DATA_TOML),
            ("server.toml", "[web]\nbind = \"127.0.0.1:7000\"\n"),
        ]);
        let vars = env(&[
            ("DTU__WEB__BIND", "0.0.0.0:9090"),
            ("DTU__DATABASE__URL", "postgres://dtu@db/dtu"),
            ("DTU__DATABASE__POOL_SIZE", "3"),
            ("DTU__LISTENERS__0__BIND", "127.0.0.1:4000"),
            ("DTU__AUTH__ADMIN_TOKEN", "007"),
            ("DTU__STORAGE__STORE_HEARTBEATS", "false"),
            ("DTU__LIVENESS__REGISTER_TIMEOUT", "250ms"),
            ("DTU_SETTINGS", "/somewhere/else"),
            ("DTU_SOMETHING", "ignored"),
            ("PATH", "/bin"),
        ]);
        let s = load_ok(dir.path(), vars).server;
        assert_eq!(s.web.bind.to_string(), "0.0.0.0:9090");
        assert_eq!(s.database.url, "postgres://dtu@db/dtu");
        assert_eq!(s.database.pool_size, 3);
        assert_eq!(s.listeners.len(), 1);
        assert_eq!(s.listeners[0].bind.to_string(), "127.0.0.1:4000");
        assert_eq!(s.listeners[0].name, "framed");
        assert_eq!(
            s.auth.admin_token, "007",
            "text kept, not parsed as a number"
        );
        assert!(!s.storage.store_heartbeats);
        assert_eq!(s.liveness.register_timeout, Duration::from_millis(250));
    }

    #[test]
    fn bad_environment_overrides_name_the_variable() {
        let dir = dir_with(&[("data.toml", DATA_TOML)]);
        let vars = env(&[
            ("DTU__WEB__BIND", "nowhere"),
            ("DTU__WEB__BINDD", "0.0.0.0:1"),
            ("DTU__LIVENESS__MAX_MISSED", "0"),
            ("DTU__NOPE__X", "1"),
        ]);
        let errors = load_err(dir.path(), vars);
        let got: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (e.file.as_str(), e.key.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("env DTU__NOPE__X", "nope"),
                ("env DTU__WEB__BINDD", "web.bindd"),
                ("env DTU__WEB__BIND", "web.bind"),
                ("env DTU__LIVENESS__MAX_MISSED", "liveness.max_missed"),
            ],
            "{errors:#?}"
        );
        assert!(
            errors[1].message.contains("did you mean \"bind\""),
            "{}",
            errors[1]
        );
    }

    #[test]
    fn environment_can_append_but_not_skip_list_elements() {
        let dir = dir_with(&[("data.toml", DATA_TOML)]);
        let vars = env(&[
            ("DTU__LISTENERS__1__NAME", "relay"),
            ("DTU__LISTENERS__1__BIND", "127.0.0.1:5000"),
            ("DTU__LISTENERS__1__PROTOCOL", "ttms"),
        ]);
        let s = load_ok(dir.path(), vars).server;
        let names: Vec<&str> = s.listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["framed", "relay"]);

        let errors = load_err(
            dir.path(),
            env(&[("DTU__LISTENERS__2__BIND", "127.0.0.1:5000")]),
        );
        let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 3, "{got:#?}");
        assert!(
            errors
                .iter()
                .all(|e| e.file == "env DTU__LISTENERS__2__BIND"),
            "{got:#?}"
        );
        assert_eq!(errors[0].key, "listeners[1]");
        assert_eq!(errors[1].key, "listeners[2].name");
        assert_eq!(errors[2].key, "listeners[2].protocol");
    }

    #[test]
    fn a_broken_profile_is_still_known_to_listeners() {
        let data = DATA_TOML.replace("[profiles.default]", "[profiles.default]\nslave = 300");
        let dir = dir_with(&[("data.toml", &data)]);
        let errors = load_err(dir.path(), no_env());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "profiles.default.slave");
        // The built-in default listener needs profile "default"; say so when it is missing.
        let dir = dir_with(&[("data.toml", "[profiles.other]\n")]);
        let errors = load_err(dir.path(), no_env());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].file, "server.toml (built-in default)");
        assert_eq!(errors[0].key, "listeners[0].profile");
        assert!(
            errors[0].message.contains("it defines other"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn ttms_needs_no_profile_and_data_may_be_empty() {
        let server = "[[listeners]]\nname = \"relay\"\nbind = \"0.0.0.0:0\"\nprotocol = \"ttms\"\n";
        let dir = dir_with(&[("data.toml", ""), ("server.toml", server)]);
        let s = load_ok(dir.path(), no_env());
        assert!(s.data.profiles.is_empty());
        assert_eq!(
            s.server.listeners[0].protocol,
            Protocol::by_name("ttms").unwrap()
        );
        assert_eq!(s.server.listeners[0].profile, None);
    }

    #[test]
    fn command_write_forms() {
        let data = r#"
[profiles.default]
[[profiles.default.polls]]
name = "coils"
function = 1
start = 0
count = 8
every = "1s"
[[profiles.default.points]]
name = "door"
address = 0
type = "bool"
[[profiles.default.commands]]
name = "many"
write = { address = 10, values = [1, -1, "2"] }
[[profiles.default.commands]]
name = "open"
write = { address = 0, coil = true }
require = { point = "door", equals = 0 }
"#;
        let dir = dir_with(&[("data.toml", data)]);
        let s = load_ok(dir.path(), no_env());
        let p = &s.data.profiles["default"];
        assert_eq!(
            p.command("many").map(|c| &c.write),
            Some(&WriteSpec::Registers {
                address: 10,
                values: vec![1, 0xFFFF, 2]
            })
        );
        let open = p.command("open").expect("open");
        assert_eq!(
            open.write,
            WriteSpec::Coil {
                address: 0,
                value: true
            }
        );
        assert_eq!(
            open.require.as_ref().map(|r| r.message.as_str()),
            Some("door must equal 0")
        );

        // A bit of a register cannot come from a coil poll.
        let bad = data.replace("type = \"bool\"", "type = \"bool\"\nbit = 1");
        let dir = dir_with(&[("data.toml", &bad)]);
        let errors = load_err(dir.path(), no_env());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "profiles.default.points[0].address");
        assert!(
            errors[0]
                .message
                .contains("with a bit needs a register poll"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn data_file_takes_no_environment_overrides() {
        let dir = dir_with(&[("data.toml", DATA_TOML)]);
        // Naming data keys in the environment is an unknown server key, not a data change.
        let errors = load_err(dir.path(), env(&[("DTU__PROFILES__DEFAULT__SLAVE", "9")]));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].key, "profiles");
    }

    #[test]
    fn relay_max_queue_has_a_default_and_is_validated() {
        let dir = dir_with(&[("data.toml", DATA_TOML), ("server.toml", "")]);
        assert_eq!(load_ok(dir.path(), no_env()).server.relay.max_queue, 10_000);
        let dir = dir_with(&[
            ("data.toml", DATA_TOML),
            ("server.toml", "[relay]\nmax_queue = 5\n"),
        ]);
        assert_eq!(load_ok(dir.path(), no_env()).server.relay.max_queue, 5);
        for bad in [
            "[relay]\nmax_queue = 0\n",
            "[relay]\nmax_queue = \"many\"\n",
            "[relay]\nmax_queue = 5\nsize = 1\n",
        ] {
            let dir = dir_with(&[("data.toml", DATA_TOML), ("server.toml", bad)]);
            let errors = load_err(dir.path(), no_env());
            assert!(
                errors.iter().any(|e| e.key.starts_with("relay.")),
                "{bad}: {errors:?}"
            );
        }
    }

    #[test]
    fn web_stream_queue_and_metrics_token() {
        let dir = dir_with(&[("data.toml", DATA_TOML), ("server.toml", "")]);
        let web = load_ok(dir.path(), no_env()).server.web;
        assert_eq!((web.stream_queue, web.metrics_token), (256, false));
        let dir = dir_with(&[
            ("data.toml", DATA_TOML),
            (
                "server.toml",
                "[web]\nbind = \"127.0.0.1:0\"\nstream_queue = 8\nmetrics_token = true\n",
            ),
        ]);
        let web = load_ok(dir.path(), no_env()).server.web;
        assert_eq!((web.stream_queue, web.metrics_token), (8, true));
        for (bad, key) in [
            ("[web]\nstream_queue = 0\n", "web.stream_queue"),
            (
                "[web]\nmetrics_token = \"yes please\"\n",
                "web.metrics_token",
            ),
        ] {
            let dir = dir_with(&[("data.toml", DATA_TOML), ("server.toml", bad)]);
            let errors = load_err(dir.path(), no_env());
            assert!(errors.iter().any(|e| e.key == key), "{bad}: {errors:?}");
        }
    }

    #[test]
    fn retention_and_spool_settings() {
        let server = "[storage]\nretention_telemetry = \"7d\"\nretention_packets = \"forever\"\nretention_deliveries = \"12h\"\nspool_path = \"/var/spool/dtu.jsonl\"\n";
        let dir = dir_with(&[("data.toml", DATA_TOML), ("server.toml", server)]);
        let s = load_ok(dir.path(), no_env()).server.storage;
        assert_eq!(s.retention_telemetry, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(s.retention_packets, None);
        assert_eq!(s.retention_deliveries, Some(Duration::from_secs(12 * 3600)));
        assert_eq!(s.spool_path, PathBuf::from("/var/spool/dtu.jsonl"));
        let bad = "[storage]\nretention_packets = \"soon\"\n";
        let dir = dir_with(&[("data.toml", DATA_TOML), ("server.toml", bad)]);
        let errors = load_err(dir.path(), no_env());
        assert!(
            errors.iter().any(|e| e.key == "storage.retention_packets"),
            "{errors:?}"
        );
    }

    #[test]
    fn default_toml_equals_default_struct() {
        let dir = dir_with(&[
            ("data.toml", DATA_TOML),
            ("server.toml", DEFAULT_SERVER_TOML),
        ]);
        assert_eq!(
            load_ok(dir.path(), no_env()).server,
            ServerSettings::default()
        );
    }

    #[test]
    fn shipped_settings_load() {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/settings"));
        let s = load_ok(dir, no_env());
        let server = &s.server;
        assert_eq!(server.web.bind.to_string(), "127.0.0.1:8080");
        let listeners: Vec<(&str, String, Protocol, Option<&str>)> = server
            .listeners
            .iter()
            .map(|l| {
                (
                    l.name.as_str(),
                    l.bind.to_string(),
                    l.protocol,
                    l.profile.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            listeners,
            [
                (
                    "framed",
                    "0.0.0.0:22334".to_string(),
                    Protocol::by_name("framed").unwrap(),
                    Some("default")
                ),
                (
                    "transparent",
                    "0.0.0.0:22335".to_string(),
                    Protocol::by_name("transparent").unwrap(),
                    Some("usr-meter")
                ),
                (
                    "ttms",
                    "0.0.0.0:22336".to_string(),
                    Protocol::by_name("ttms").unwrap(),
                    None
                ),
            ]
        );
        assert_eq!(server.liveness, ServerSettings::default().liveness);
        assert_eq!(server.database, ServerSettings::default().database);
        assert_eq!(server.storage, ServerSettings::default().storage);
        assert!(server.webhooks.is_empty());

        let p = &s.data.profiles["default"];
        assert_eq!(p.slave, 1);
        assert_eq!(p.polls.len(), 2);
        assert_eq!((p.polls[0].start, p.polls[0].end()), (2000, 2099));
        assert_eq!(
            p.polls[0].trigger,
            PollTrigger::Every(Duration::from_secs(30))
        );
        assert_eq!(p.polls[1].trigger, PollTrigger::Heartbeat);
        let t = p.point("temperature").expect("temperature");
        assert_eq!(
            (t.address, t.ty, t.scale, t.unit.as_str()),
            (2000, PointType::I16, 0.1, "°C")
        );
        let e = p.point("energy").expect("energy");
        assert_eq!((e.ty, e.order), (PointType::U32, WordOrder::Cdab));
        assert_eq!(p.point("alarm").map(|a| a.bit), Some(Some(0)));
        assert_eq!(p.point("pressure").map(|a| a.scale), Some(0.01));
        let on = p.command("turn_on").expect("turn_on");
        assert_eq!(
            on.write,
            WriteSpec::Register {
                address: 2100,
                value: 1
            }
        );
        let req = on.require.as_ref().expect("require");
        assert_eq!((req.point.as_str(), req.equals), ("status", 5.0));
        assert_eq!(req.message, "device must be in standby");
        assert_eq!(
            p.command("turn_off").map(|c| &c.write),
            Some(&WriteSpec::Register {
                address: 2100,
                value: 0
            })
        );
        assert_eq!(p.rules[0].above, Some(80.0));
        assert_eq!(p.rules[0].hysteresis, 2.0);

        let u = &s.data.profiles["usr-meter"];
        assert!(u.registration.is_some());
        assert_eq!(
            u.heartbeat.as_ref().map(|h| h.bytes.as_slice()),
            Some(&b"www.usr.cn"[..])
        );
        assert_eq!(u.points.len(), p.points.len());

        // Decoding with the shipped points works end to end.
        let mut regs = vec![0u16; 100];
        regs[0] = 235;
        let values = crate::protocol::points::decode_block(
            &p.points,
            2000,
            &crate::protocol::points::BlockData::Registers(&regs),
        );
        let temp = values
            .iter()
            .find(|d| d.name == "temperature")
            .map(|d| d.value);
        assert!(temp.is_some_and(|v| (v - 23.5).abs() < 1e-9));
    }

    #[test]
    fn display_and_parse_helpers() {
        let e = SettingsError {
            file: "data.toml".into(),
            key: "profiles.default.points[2].address".into(),
            message: "bad".into(),
        };
        assert_eq!(
            e.to_string(),
            "data.toml: profiles.default.points[2].address: bad"
        );
        for p in crate::protocol::PROTOCOLS.iter().map(|e| Protocol::of(e)) {
            assert_eq!(p.to_string().parse::<Protocol>(), Ok(p));
            assert_eq!(p.as_str(), p.to_string());
        }
        assert!("Framed".parse::<Protocol>().is_err());
        for f in [
            crate::protocol::link::IdFormat::Ascii,
            crate::protocol::link::IdFormat::Hex,
        ] {
            assert_eq!(
                f.to_string().parse::<crate::protocol::link::IdFormat>(),
                Ok(f)
            );
        }
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("soon").is_err());
    }

    const BROKEN_SERVER: &str = r#"
[web]
bind = "127.0.0.1:8080"
colour = "blue"

[[listeners]]
name = "a"
bind = "0.0.0.0:22334"
protocol = "framed"
profile = "default"

[[listeners]]
name = "a"
bind = "0.0.0.0:22334"
protocol = "framed"
profile = "nosuch"

[[listeners]]
name = "c"
bind = "localhost:1"
protocol = "udp"

[[listeners]]
name = "d"
bind = "127.0.0.1:8080"
protocol = "transparent"
profile = "plain"

[[listeners]]
name = "e"
bind = "0.0.0.0:22336"
protocol = "framed"

[liveness]
heartbeat_interval = "30 parsecs"
max_missed = 0
register_timeout = 10

[database]
url = "mongodb://secret@host/db"
pool_size = 0

[storage]
batch_size = "many"
store_heartbeats = "yes"

[[webhooks]]
url = "ftp://example.com/hook"
events = ["device.online", "device.exploded"]
"#;

    const BROKEN_DATA: &str = r#"
extra = 1

[profiles.default]
slave = 0
retires = 3

[[profiles.default.polls]]
name = "p1"
function = 3
start = 100
count = 10
every = "30s"
[[profiles.default.polls]]
name = "p1"
function = 4
start = 200
count = 10
trigger = "heartbeat"
[[profiles.default.polls]]
name = "coils"
function = 1
start = 300
count = 10
every = "1m"

[[profiles.default.points]]
name = "t"
address = 100
type = "i16"
[[profiles.default.points]]
name = "t"
address = 101
type = "u16"
[[profiles.default.points]]
name = "far"
address = 500
type = "u16"
[[profiles.default.points]]
name = "cross"
address = 109
type = "f32"
[[profiles.default.points]]
name = "typo"
address = 102
type = "float"
[[profiles.default.points]]
name = "ord"
address = 104
type = "u32"
order = "ABDC"
[[profiles.default.points]]
name = "coilnum"
address = 300
type = "u16"
[[profiles.default.points]]
name = "flag"
address = 301
type = "bool"
[[profiles.default.points]]
name = "bits"
address = 105
type = "u16"
bit = 3

[[profiles.default.commands]]
name = "go"
write = { address = 10, value = 1 }
require = { point = "nosuch", equals = 1 }
[[profiles.default.commands]]
name = "go"
write = { address = 10 }
[[profiles.default.commands]]
name = "both"
write = { address = 1, value = 1, coil = true }

[[profiles.default.rules]]
name = "r"
point = "t"
[[profiles.default.rules]]
name = "r"
point = "ghost"
above = 1
[[profiles.default.rules]]
name = "band"
point = "t"
above = 1
below = 5

[profiles.default.registration]
pattern = "([0-9]"
reply = "zz"

[profiles.default.heartbeat]

[profiles.polls]
[[profiles.polls.polls]]
name = "f5"
function = 5
start = 0
count = 1
every = "1s"
[[profiles.polls.polls]]
name = "zero"
function = 3
start = 0
count = 0
every = "1s"
[[profiles.polls.polls]]
name = "big"
function = 3
start = 0
count = 126
every = "1s"
[[profiles.polls.polls]]
name = "bigbits"
function = 1
start = 0
count = 2001
every = "1s"
[[profiles.polls.polls]]
name = "past"
function = 3
start = 65500
count = 100
every = "1s"
[[profiles.polls.polls]]
name = "both"
function = 3
start = 0
count = 1
every = "1s"
trigger = "heartbeat"
[[profiles.polls.polls]]
name = "neither"
function = 3
start = 0
count = 1
[[profiles.polls.polls]]
name = "badtrig"
function = 3
start = 0
count = 1
trigger = "sometimes"
[[profiles.polls.polls]]
name = "slow"
function = 3
start = 0
count = 1
every = "fortnight"
[[profiles.polls.points]]
name = "lost"
address = 9999
type = "u16"
[profiles.polls.registration]
pattern = "x"
length = 3
[profiles.polls.heartbeat]
hex = "F"

[profiles.plain]
slave = 1

[profiles.reg2.registration]
format = "base64"
"#;

    #[test]
    fn broken_settings_report_every_problem() {
        let dir = dir_with(&[("server.toml", BROKEN_SERVER), ("data.toml", BROKEN_DATA)]);
        let errors = load_err(dir.path(), no_env());
        let expected: &[(&str, &str, &str)] = &[
            ("server.toml", "web.colour", "unknown key"),
            (
                "server.toml",
                "listeners[1].profile",
                "\"nosuch\" is not defined in data.toml",
            ),
            ("server.toml", "listeners[2].bind", "not an IP:PORT"),
            (
                "server.toml",
                "listeners[2].protocol",
                "unknown protocol \"udp\"",
            ),
            (
                "server.toml",
                "listeners[3].profile",
                "no [profiles.plain.registration]",
            ),
            ("server.toml", "listeners[4].profile", "needs a profile"),
            (
                "server.toml",
                "listeners[1].name",
                "duplicate listener name \"a\"",
            ),
            (
                "server.toml",
                "listeners[1].bind",
                "conflicts with listeners[0].bind",
            ),
            (
                "server.toml",
                "listeners[3].bind",
                "conflicts with web.bind",
            ),
            (
                "server.toml",
                "liveness.heartbeat_interval",
                "not a duration",
            ),
            ("server.toml", "liveness.max_missed", "at least 1"),
            (
                "server.toml",
                "liveness.register_timeout",
                "expected a duration string",
            ),
            ("server.toml", "database.url", "unsupported database URL"),
            ("server.toml", "database.pool_size", "at least 1"),
            ("server.toml", "storage.batch_size", "expected an integer"),
            (
                "server.toml",
                "storage.store_heartbeats",
                "expected true or false, found \"yes\"",
            ),
            (
                "server.toml",
                "webhooks[0].url",
                "not an http:// or https:// URL",
            ),
            (
                "server.toml",
                "webhooks[0].events[1]",
                "unknown event \"device.exploded\"",
            ),
            ("data.toml", "extra", "unknown key"),
            (
                "data.toml",
                "profiles.default.retires",
                "did you mean \"retries\"",
            ),
            (
                "data.toml",
                "profiles.default.slave",
                "out of range (1..=247)",
            ),
            (
                "data.toml",
                "profiles.default.polls[1].name",
                "duplicate poll name \"p1\"",
            ),
            (
                "data.toml",
                "profiles.default.points[1].name",
                "duplicate point name \"t\"",
            ),
            (
                "data.toml",
                "profiles.default.points[2].address",
                "outside every poll's range",
            ),
            (
                "data.toml",
                "profiles.default.points[3].address",
                "this f32 spans 109..=110 but poll \"p1\" ends at 109",
            ),
            (
                "data.toml",
                "profiles.default.points[4].type",
                "unknown point type \"float\"",
            ),
            (
                "data.toml",
                "profiles.default.points[5].order",
                "unknown order \"ABDC\"",
            ),
            (
                "data.toml",
                "profiles.default.points[6].address",
                "needs a register poll",
            ),
            (
                "data.toml",
                "profiles.default.points[8].bit",
                "only bool points take a bit",
            ),
            (
                "data.toml",
                "profiles.default.commands[1].name",
                "duplicate command name \"go\"",
            ),
            (
                "data.toml",
                "profiles.default.commands[0].require.point",
                "unknown point \"nosuch\"",
            ),
            (
                "data.toml",
                "profiles.default.commands[1].write",
                "needs one of value",
            ),
            (
                "data.toml",
                "profiles.default.commands[2].write",
                "only one of",
            ),
            (
                "data.toml",
                "profiles.default.rules[1].name",
                "duplicate rule name \"r\"",
            ),
            ("data.toml", "profiles.default.rules[0]", "needs above"),
            (
                "data.toml",
                "profiles.default.rules[1].point",
                "unknown point \"ghost\"",
            ),
            (
                "data.toml",
                "profiles.default.rules[2]",
                "must be greater than below",
            ),
            (
                "data.toml",
                "profiles.default.registration.pattern",
                "invalid regex \"([0-9]\": unclosed group",
            ),
            (
                "data.toml",
                "profiles.default.registration.reply",
                "not hex",
            ),
            ("data.toml", "profiles.default.heartbeat", "needs ascii"),
            (
                "data.toml",
                "profiles.polls.polls[0].function",
                "function 5 cannot poll",
            ),
            ("data.toml", "profiles.polls.polls[1].count", "at least 1"),
            (
                "data.toml",
                "profiles.polls.polls[2].count",
                "limit of 125 registers",
            ),
            (
                "data.toml",
                "profiles.polls.polls[3].count",
                "limit of 2000 bits",
            ),
            (
                "data.toml",
                "profiles.polls.polls[4].count",
                "past address 65535",
            ),
            (
                "data.toml",
                "profiles.polls.polls[5]",
                "both every and trigger",
            ),
            ("data.toml", "profiles.polls.polls[6]", "needs every"),
            (
                "data.toml",
                "profiles.polls.polls[7].trigger",
                "unknown trigger \"sometimes\"",
            ),
            (
                "data.toml",
                "profiles.polls.polls[8].every",
                "not a duration",
            ),
            (
                "data.toml",
                "profiles.polls.registration",
                "both pattern and length",
            ),
            ("data.toml", "profiles.polls.heartbeat.hex", "not hex"),
            (
                "data.toml",
                "profiles.reg2.registration.format",
                "unknown format \"base64\"",
            ),
            ("data.toml", "profiles.reg2.registration", "needs pattern"),
        ];
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let shown = shown.join("\n");
        for (file, key, fragment) in expected {
            let hits = errors
                .iter()
                .filter(|e| e.file == *file && e.key == *key && e.message.contains(fragment))
                .count();
            assert_eq!(
                hits, 1,
                "expected one {file}: {key}: …{fragment}… in\n{shown}"
            );
        }
        assert_eq!(
            errors.len(),
            expected.len(),
            "one error per problem, got\n{shown}"
        );
        // The database URL may carry a password: it is not echoed.
        assert!(!shown.contains("secret@host"));
    }
}
