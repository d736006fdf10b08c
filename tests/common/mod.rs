//! Harness for end-to-end tests: the real `dtu-supervisor` binary on free ports with a
//! settings dir written per test, HTTP through ureq, and fake DTUs on real TCP sockets.
//!
//! Waiting is always "until a condition holds, or a generous deadline passes", never a fixed
//! sleep that a loaded machine could miss.

#![allow(dead_code)]

pub mod device;
pub mod peers;
pub mod receiver;
pub mod webdriver;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any condition may take before a test fails. Generous: CI machines are loaded.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// Polls `cond` every 50 ms until it returns `Some`; None once DEADLINE has passed.
pub fn wait_until<T>(mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if start.elapsed() > DEADLINE {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `cond` every 50 ms until it returns `Some`, or panics with `what` after DEADLINE.
pub fn wait_for<T>(what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if start.elapsed() > DEADLINE {
            panic!("timed out after {DEADLINE:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The data.toml most tests use: one framed/transparent profile covering every point type
/// the tests decode.
pub const DATA_TOML: &str = r#"
[profiles.default]
slave = 1
response_timeout = "400ms"
retries = 1

[[profiles.default.polls]]
name = "block"
function = 3
start = 2000
count = 40
every = "1s"

[[profiles.default.polls]]
name = "on_heartbeat"
function = 3
start = 2300
count = 10
trigger = "heartbeat"

[[profiles.default.points]]
name = "temperature"
address = 2000
type = "i16"
scale = 0.1
unit = "°C"

[[profiles.default.points]]
name = "humidity"
address = 2010
type = "f32"
unit = "%"

[[profiles.default.points]]
name = "energy"
address = 2020
type = "u32"
order = "CDAB"
unit = "kWh"

[[profiles.default.points]]
name = "status"
address = 2030
type = "u16"

[[profiles.default.points]]
name = "pressure"
address = 2300
type = "u16"
scale = 0.01
unit = "bar"

[[profiles.default.commands]]
name = "turn_on"
write = { address = 2100, value = 1 }
require = { point = "status", equals = 5, message = "device must be in standby" }

[[profiles.default.commands]]
name = "reset"
write = { address = 2101, values = [7, 8] }

[profiles.default.registration]
format = "ascii"
pattern = "^[0-9]{15}$"

[profiles.default.heartbeat]
ascii = "www.usr.cn"
"#;

/// The admin token every test server is configured with (`[auth] admin_token`), unless its
/// `Options::admin_token` is None.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A running server process. Killed on drop if a test fails half-way.
pub struct TestServer {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub web: u16,
    pub framed: u16,
    pub transparent: u16,
    /// The `$TTMS` relay listener.
    pub ttms: u16,
    pub log: PathBuf,
    /// What `get`/`post` send as `Authorization: Bearer`; None sends nothing.
    pub token: Option<String>,
    /// Extra environment of the server process (kept for restarts).
    pub env: Vec<(String, String)>,
    /// The soft open-files limit the process starts with (kept for restarts).
    pub soft_open_files: Option<u64>,
}

pub struct Options {
    pub heartbeat_interval: &'static str,
    pub max_missed: u32,
    pub register_timeout: &'static str,
    pub data_toml: String,
    /// Appended to server.toml right after its `[storage]` section: bare keys land in
    /// `[storage]`, further sections may follow.
    pub extra_server_toml: String,
    /// The database URL; a SQLite file in the test's directory when None.
    pub database_url: Option<String>,
    /// `[auth] admin_token`; None leaves it empty, so the server generates one.
    pub admin_token: Option<String>,
    /// Environment variables for the server process, e.g. `DTU__WEB__STREAM_QUEUE` to set a
    /// key of a section the harness writes itself.
    pub env: Vec<(String, String)>,
    /// The soft limit on open files the server process starts with (the hard limit is left
    /// as it is); None: inherited.
    pub soft_open_files: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            heartbeat_interval: "30s",
            max_missed: 3,
            register_timeout: "10s",
            data_toml: DATA_TOML.to_string(),
            extra_server_toml: String::new(),
            database_url: None,
            admin_token: Some(ADMIN_TOKEN.to_string()),
            env: Vec::new(),
            soft_open_files: None,
        }
    }
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        // Port 0 everywhere: the server picks free ports and logs them, so parallel tests
        // never race for a port picked in advance.
        let server_toml = format!(
            r#"
[web]
bind = "127.0.0.1:0"

[[listeners]]
name = "framed"
bind = "127.0.0.1:0"
protocol = "framed"
profile = "default"

[[listeners]]
name = "transparent"
bind = "127.0.0.1:0"
protocol = "transparent"
profile = "default"

[[listeners]]
name = "ttms"
bind = "127.0.0.1:0"
protocol = "ttms"

[liveness]
heartbeat_interval = "{hb}"
max_missed = {missed}
register_timeout = "{reg}"

[auth]
admin_token = "{admin}"

[database]
url = "{db}"

[storage]
spool_path = "{spool}"
flush_interval = "200ms"
{extra}
"#,
            hb = opts.heartbeat_interval,
            missed = opts.max_missed,
            reg = opts.register_timeout,
            db = opts
                .database_url
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("dtu.db").display())),
            spool = dir.path().join("spool.jsonl").display(),
            extra = opts.extra_server_toml,
            admin = opts.admin_token.clone().unwrap_or_default(),
        );
        std::fs::write(dir.path().join("server.toml"), server_toml).expect("write server.toml");
        std::fs::write(dir.path().join("data.toml"), &opts.data_toml).expect("write data.toml");
        let log = dir.path().join("server.log");
        let child = spawn_server(dir.path(), &log, &opts.env, opts.soft_open_files);
        let mut server = TestServer {
            child,
            dir,
            web: 0,
            framed: 0,
            transparent: 0,
            ttms: 0,
            log,
            token: opts.admin_token.clone(),
            env: opts.env.clone(),
            soft_open_files: opts.soft_open_files,
        };
        server.read_ports();
        server.wait_healthy();
        server
    }

    /// Reads the ports the server bound from its log lines
    /// (`listener NAME: ... devices on ADDR (...)` and `web: API and console on http://ADDR`).
    fn read_ports(&mut self) {
        let (web, framed, transparent, ttms) = wait_for("the server to log its ports", || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "server exited with {status} before listening:\n{}",
                    self.log_text()
                );
            }
            let log = self.log_text();
            let port_after = |marker: &str, end: &str| logged_port(&log, marker, end);
            Some((
                port_after("web: API and console on http://", " ")?,
                port_after("listener framed: framed devices on ", " (")?,
                port_after("listener transparent: transparent devices on ", " (")?,
                port_after("listener ttms: ttms devices on ", " (")?,
            ))
        });
        self.web = web;
        self.framed = framed;
        self.transparent = transparent;
        self.ttms = ttms;
    }

    /// The port of a listener added through `extra_server_toml`, named `name` and speaking
    /// `protocol`, from its log line.
    pub fn listener_port(&self, name: &str, protocol: &str) -> u16 {
        let marker = format!("listener {name}: {protocol} devices on ");
        wait_for(&format!("listener {name} to log its port"), || {
            logged_port(&self.log_text(), &marker, " (")
        })
    }

    fn wait_healthy(&self) {
        wait_for("the server to answer /api/health", || {
            match ureq::get(&self.url("/api/health"))
                .timeout(Duration::from_secs(2))
                .call()
            {
                Ok(r) if r.status() == 200 => Some(()),
                _ => None,
            }
        });
    }

    /// Starts the server again on the same settings and database (after `terminate`); it
    /// gets new ports.
    pub fn restart(&mut self) {
        let log = self.dir.path().join("server-restarted.log");
        self.child = spawn_server(self.dir.path(), &log, &self.env, self.soft_open_files);
        self.log = log;
        self.read_ports();
        self.wait_healthy();
    }

    /// The SQLite database file of this test (when no other URL was given).
    pub fn sqlite_url(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("dtu.db").display())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.web, path)
    }

    /// A request with this server's token (if any) as `Authorization: Bearer`.
    pub fn request(&self, method: &str, path: &str) -> ureq::Request {
        with_token(
            ureq::request(method, &self.url(path)).timeout(DEADLINE),
            self.token.as_deref(),
        )
    }

    /// GET, returning status and JSON body (whatever the status).
    pub fn get(&self, path: &str) -> (u16, Value) {
        answer(self.request("GET", path).call())
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        answer(self.request("POST", path).send_json(body.clone()))
    }

    pub fn post_raw(&self, path: &str, content_type: &str, body: &str) -> (u16, Value) {
        answer(
            self.request("POST", path)
                .set("Content-Type", content_type)
                .send_string(body),
        )
    }

    /// GET with another token (None: no Authorization header).
    pub fn get_as(&self, token: Option<&str>, path: &str) -> (u16, Value) {
        answer(with_token(ureq::get(&self.url(path)).timeout(DEADLINE), token).call())
    }

    /// POST with another token (None: no Authorization header).
    pub fn post_as(&self, token: Option<&str>, path: &str, body: &Value) -> (u16, Value) {
        answer(
            with_token(ureq::post(&self.url(path)).timeout(DEADLINE), token)
                .send_json(body.clone()),
        )
    }

    /// DELETE with another token (None: no Authorization header).
    pub fn delete_as(&self, token: Option<&str>, path: &str) -> (u16, Value) {
        answer(with_token(ureq::delete(&self.url(path)).timeout(DEADLINE), token).call())
    }

    /// The hex of the last `limit` packets sent to device `id`, newest first.
    pub fn packets_out(&self, id: &str, limit: usize) -> Vec<String> {
        let (status, packets) = self.get(&format!("/api/devices/{id}/packets?limit={limit}"));
        assert_eq!(status, 200, "{packets}");
        packets
            .as_array()
            .expect("packets")
            .iter()
            .filter(|p| p["direction"] == "out")
            .filter_map(|p| p["hex"].as_str().map(str::to_string))
            .collect()
    }

    pub fn device(&self, id: &str) -> Option<Value> {
        let (status, body) = self.get(&format!("/api/devices/{id}"));
        (status == 200).then_some(body)
    }

    pub fn online(&self, id: &str) -> bool {
        self.device(id)
            .is_some_and(|d| d["online"] == Value::Bool(true))
    }

    /// Waits until point `name` of device `id` has a value and returns it.
    pub fn wait_value(&self, id: &str, name: &str) -> f64 {
        wait_for(&format!("value {name} of device {id}"), || {
            let (status, values) = self.get(&format!("/api/devices/{id}/values"));
            if status != 200 {
                return None;
            }
            values[name]["value"].as_f64()
        })
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        signal(&self.child, "TERM");
        wait_for("the server to exit after SIGTERM", || {
            self.child.try_wait().ok().flatten()
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- server log ----\n{}", self.log_text());
        }
    }
}

/// The port in the first log line holding `marker`, between it and `end`.
fn logged_port(log: &str, marker: &str, end: &str) -> Option<u16> {
    let line = log.lines().find(|l| l.contains(marker))?;
    let rest = line.split(marker).nth(1)?;
    let addr = rest.split(end).next()?.trim();
    addr.rsplit(':').next()?.parse().ok()
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_dtu-supervisor")
}

fn spawn_server(
    settings: &Path,
    log: &Path,
    env: &[(String, String)],
    soft_open_files: Option<u64>,
) -> Child {
    let out = std::fs::File::create(log).expect("create log");
    let err = out.try_clone().expect("clone log");
    // A lower soft limit is set by the shell that then becomes the server.
    let mut command = match soft_open_files {
        Some(n) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("ulimit -S -n {n} && exec \"$0\" \"$@\""))
                .arg(binary());
            c
        }
        None => Command::new(binary()),
    };
    command
        .arg("--settings")
        .arg(settings)
        .env(
            "RUST_LOG",
            "debug,actix_server=info,actix_web=info,mio=info",
        )
        .env_remove("DTU_SETTINGS")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("start dtu-supervisor")
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} failed");
}

fn with_token(req: ureq::Request, token: Option<&str>) -> ureq::Request {
    match token {
        Some(t) => req.set("Authorization", &format!("Bearer {t}")),
        None => req,
    }
}

pub fn answer(r: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    let resp = match r {
        Ok(resp) => resp,
        Err(ureq::Error::Status(_, resp)) => resp,
        Err(e) => panic!("HTTP request failed: {e}"),
    };
    let status = resp.status();
    let mut text = String::new();
    resp.into_reader()
        .read_to_string(&mut text)
        .expect("read body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}
