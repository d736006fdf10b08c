//! Unit tests of loading and validating both settings files.
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

pub(super) fn no_env() -> Vec<(OsString, OsString)> {
    Vec::new()
}

pub(super) fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
    pairs
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect()
}

pub(super) fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write settings file");
    }
    dir
}

pub(super) fn load_ok(dir: &Path, vars: Vec<(OsString, OsString)>) -> Settings {
    match load_with_env(dir, vars) {
        Ok(s) => s,
        Err(errors) => {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            panic!("settings did not load:\n{}", lines.join("\n"));
        }
    }
}

pub(super) fn load_err(dir: &Path, vars: Vec<(OsString, OsString)>) -> Vec<SettingsError> {
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
fn max_spool_is_a_size_and_warn_lag_a_duration() {
    for (text, bytes) in [
        ("\"2GiB\"", 2u64 << 30),
        ("\"500 MB\"", 500_000_000),
        ("\"1.5gb\"", 1_500_000_000),
        ("3000000", 3_000_000),
    ] {
        let server = format!("[storage]\nmax_spool = {text}\nwarn_lag = \"45s\"\n");
        let dir = dir_with(&[("data.toml", DATA_TOML), ("server.toml", &server)]);
        let s = load_ok(dir.path(), no_env()).server.storage;
        assert_eq!(
            (s.max_spool, s.warn_lag),
            (bytes, Duration::from_secs(45)),
            "{text}"
        );
    }
    for (bad, key, says) in [
        (
            "max_spool = \"lots\"",
            "storage.max_spool",
            "expected a size",
        ),
        (
            "max_spool = \"100KB\"",
            "storage.max_spool",
            "less than 1MB",
        ),
        ("max_spool = -5", "storage.max_spool", "expected a size"),
        ("max_spool = true", "storage.max_spool", "expected a size"),
        ("warn_lag = \"soon\"", "storage.warn_lag", "not a duration"),
    ] {
        let server = format!("[storage]\n{bad}\n");
        let dir = dir_with(&[("data.toml", DATA_TOML), ("server.toml", &server)]);
        let errors = load_err(dir.path(), no_env());
        assert!(
            errors
                .iter()
                .any(|e| e.key == key && e.message.contains(says)),
            "{bad}: {errors:?}"
        );
    }
}

#[test]
fn limits_are_read_and_checked() {
    let server = "[limits]\nmax_connections = 500\nmax_per_address = 20\nmax_unregistered = 50\n";
    let dir = dir_with(&[("data.toml", DATA_TOML), ("server.toml", server)]);
    let l = load_ok(dir.path(), no_env()).server.limits;
    assert_eq!(
        (l.max_connections, l.max_per_address, l.max_unregistered),
        (500, 20, 50)
    );
    for (bad, key) in [
        ("max_per_address = 0", "limits.max_per_address"),
        ("max_unregistered = -1", "limits.max_unregistered"),
        ("max_connections = \"many\"", "limits.max_connections"),
        ("max_buffered = 10", "limits.max_buffered"),
    ] {
        let server = format!("[limits]\n{bad}\n");
        let dir = dir_with(&[("data.toml", DATA_TOML), ("server.toml", &server)]);
        let errors = load_err(dir.path(), no_env());
        assert!(errors.iter().any(|e| e.key == key), "{bad}: {errors:?}");
    }
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
    // As the defaults, but the shipped file stores only the packets of what went wrong.
    assert_eq!(
        server.storage,
        StorageSettings {
            packets: PacketMode::Errors,
            ..ServerSettings::default().storage
        }
    );
    assert!(server.webhooks.is_empty());

    let p = &s.data.profiles["default"];
    assert_eq!(p.slave, 1);
    assert_eq!(p.polls.len(), 2);
    let block = p.polls[0].block().expect("a block");
    assert_eq!((block.start, block.end()), (2000, 2099));
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
