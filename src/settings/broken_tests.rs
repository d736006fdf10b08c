//! One test with settings that are wrong in every way the loader checks: every problem is
//! reported, each with its file and key.

use super::tests::{dir_with, load_err, no_env};

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
packets = "some"
recent_packets = -1

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
        ("server.toml", "storage.packets", "(all, errors or none)"),
        ("server.toml", "storage.recent_packets", "out of range"),
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
