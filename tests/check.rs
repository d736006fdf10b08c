//! `dtu-supervisor check`: exit 0 on good settings; every problem, with file and key, and
//! exit 2 on bad ones — and a server started on bad settings refuses to start.

mod common;

use std::process::Command;

fn check(dir: &std::path::Path) -> (i32, String) {
    let out = Command::new(common::binary())
        .arg("check")
        .arg("--settings")
        .arg(dir)
        .env_remove("DTU_SETTINGS")
        .output()
        .expect("run dtu-supervisor check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn shipped_settings_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("settings");
    let (code, text) = check(&dir);
    assert_eq!(code, 0, "{text}");
}

#[test]
fn broken_settings_list_every_problem_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("server.toml"),
        r#"
[web]
bind = "127.0.0.1:18080"

[[listeners]]
name = "a"
bind = "0.0.0.0:23000"
protocol = "framed"
profile = "default"

[[listeners]]
name = "b"
bind = "0.0.0.0:23000"
protocol = "carrier-pigeon"
profile = "missing"

[liveness]
heartbeat_interval = "thirty seconds"
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("data.toml"),
        r#"
[profiles.default]
slave = 1

[[profiles.default.polls]]
name = "block"
function = 3
start = 2000
count = 10
every = "30s"

[[profiles.default.points]]
name = "outside"
address = 5000
type = "u16"

[[profiles.default.points]]
name = "crossing"
address = 2009
type = "f32"

[[profiles.default.points]]
name = "weird"
address = 2001
type = "u24"
"#,
    )
    .unwrap();
    let (code, text) = check(dir.path());
    assert_eq!(code, 2, "{text}");
    let expect = [
        ("server.toml", "listeners[1].protocol"),
        ("server.toml", "listeners[1].profile"),
        ("server.toml", "listeners[1].bind"),
        ("server.toml", "liveness.heartbeat_interval"),
        ("data.toml", "profiles.default.points[0].address"),
        ("data.toml", "profiles.default.points[1]"),
        ("data.toml", "profiles.default.points[2].type"),
    ];
    for (file, key) in expect {
        assert!(
            text.lines().any(|l| l.contains(file) && l.contains(key)),
            "no error for {file} {key} in:\n{text}"
        );
    }

    // The server itself refuses these settings the same way, without starting.
    let out = Command::new(common::binary())
        .arg("--settings")
        .arg(dir.path())
        .env_remove("DTU_SETTINGS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn missing_settings_dir_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (code, text) = check(&dir.path().join("nowhere"));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("data.toml"), "{text}");
}

#[test]
fn environment_overrides_reach_the_settings() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("settings");
    let run = |key: &str, value: &str| {
        Command::new(common::binary())
            .args(["check", "--settings"])
            .arg(&dir)
            .env_remove("DTU_SETTINGS")
            .env(key, value)
            .output()
            .expect("run dtu-supervisor check")
    };
    let good = run("DTU__WEB__BIND", "127.0.0.1:9191");
    assert_eq!(good.status.code(), Some(0));
    let bad = run("DTU__WEB__BIND", "nowhere");
    assert_eq!(bad.status.code(), Some(2));
    let text = String::from_utf8_lossy(&bad.stderr);
    assert!(text.contains("DTU__WEB__BIND"), "{text}");
    let bad = run("DTU__LIVENESS__MAX_MISSED", "0");
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn a_port_already_taken_stops_the_start_with_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("settings");
    std::fs::copy(shipped.join("data.toml"), dir.path().join("data.toml")).unwrap();
    std::fs::write(
        dir.path().join("server.toml"),
        format!(
            "[web]\nbind = \"127.0.0.1:0\"\n[[listeners]]\nname = \"framed\"\nbind = \"127.0.0.1:{port}\"\nprotocol = \"framed\"\nprofile = \"default\"\n[database]\nurl = \"sqlite://{}\"\n[storage]\nspool_path = \"{}\"\n",
            dir.path().join("dtu.db").display(),
            dir.path().join("spool.jsonl").display()
        ),
    )
    .unwrap();
    let out = Command::new(common::binary())
        .arg("--settings")
        .arg(dir.path())
        .env_remove("DTU_SETTINGS")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "listener framed: cannot listen on 127.0.0.1:{port}"
        )),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    drop(taken);
}
