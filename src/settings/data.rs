//! Validation of the data settings tree: profiles, their polls, points, commands and rules.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use config::{Value, ValueKind};

use super::tree::{
    array, array_of, child_path, duration, float, hex_bytes, index_path, int_in, name, parsed,
    report_duplicates, string, uint, Ctx, Field, Section,
};
use super::{
    Block, DataSettings, Meter, NamedCommand, Poll, PollRead, PollTrigger, Profile, Require, Unit,
    WriteSpec,
};
use crate::events::rules::Rule;
use crate::protocol::dlt645::{self, formats, Di};
use crate::protocol::link::{Heartbeat, IdFormat, IdMatcher, Registration, RegistrationMode};
use crate::protocol::points::{Point, PointType, WordOrder};

/// Most registers one read may ask for (functions 3/4).
pub const MAX_READ_REGISTERS: u16 = 125;
/// Most coils/inputs one read may ask for (functions 1/2).
pub const MAX_READ_BITS: u16 = 2000;
/// Most registers one write-multiple may carry (function 16).
pub const MAX_WRITE_REGISTERS: usize = 123;

/// What the server's checks need to know of a profile, even one with problems of its own
/// (so a broken profile does not also make every listener naming it "unknown").
pub(super) struct ProfileInfo {
    pub has_registration: bool,
    /// Whether it lists `units` (and so cannot be a unit itself).
    pub has_units: bool,
}

/// The profiles data.toml names, and the file's name for messages.
pub(super) struct ProfileIndex {
    pub file: String,
    pub profiles: BTreeMap<String, ProfileInfo>,
}

/// Reads every profile, recording each problem in `ctx`. Only profiles without problems are
/// in the returned settings; the index names them all.
pub(super) fn validate(ctx: &mut Ctx<'_>, root: &Value) -> (DataSettings, ProfileIndex) {
    let mut data = DataSettings::default();
    let mut index = ProfileIndex {
        file: ctx.file.clone(),
        profiles: BTreeMap::new(),
    };
    let Some(top) = Section::new(ctx, "", root, &["profiles"]) else {
        return (data, index);
    };
    let Some(profiles) = top
        .get("profiles")
        .and_then(|v| Section::open(ctx, "profiles", v))
    else {
        return (data, index);
    };
    // Profiles with units name other profiles: those are read first, then the buses.
    let mut buses = Vec::new();
    for (profile_name, value) in profiles.entries() {
        let path = child_path("profiles", profile_name);
        let has_key = |key: &str| {
            matches!(&value.kind, ValueKind::Table(t)
                if t.get(key).is_some_and(|r| !matches!(r.kind, ValueKind::Nil)))
        };
        let info = ProfileInfo {
            has_registration: has_key("registration"),
            has_units: has_key("units"),
        };
        index.profiles.insert(profile_name.clone(), info);
        let before = ctx.errors.len();
        if profile_name.trim().is_empty() {
            ctx.err(&path, Some(value), "a profile name must not be empty");
        }
        let Some((profile, units)) = profile(ctx, profile_name, &path, value) else {
            continue;
        };
        let valid = ctx.errors.len() == before;
        if units.is_empty() {
            if valid {
                data.profiles
                    .insert(profile_name.clone(), Arc::new(profile));
            }
        } else {
            // Its units are looked up even when it has problems: every problem is reported.
            buses.push((profile, units, valid));
        }
    }
    for (mut bus, units, valid) in buses {
        let before = ctx.errors.len();
        bus.units = resolve_units(ctx, units, &data, &index);
        if valid && ctx.errors.len() == before {
            data.profiles.insert(bus.name.clone(), Arc::new(bus));
        }
    }
    (data, index)
}

/// A unit as the file names it, before its profile is looked up.
struct UnitRef {
    slave: u8,
    profile: String,
    /// Its path in the file and the value of its `profile` key, for messages.
    path: String,
    value: Value,
    /// A DL/T 645 meter's address, with its path and value for messages.
    address: Option<(dlt645::Address, String, Value)>,
}

/// Reads `[[profiles.X.units]]`: each a slave 1..=247 (no slave twice), a profile, and for a
/// DL/T 645 meter optionally its address.
fn units(ctx: &mut Ctx<'_>, s: &Section<'_>) -> Vec<UnitRef> {
    let mut out = Vec::new();
    let mut seen = BTreeMap::new();
    for (i, item) in list(ctx, s, "units").iter().enumerate() {
        let path = index_path(&s.key("units"), i);
        let Some(u) = Section::new(ctx, &path, item, &["slave", "profile", "address"]) else {
            continue;
        };
        let slave = u.required(ctx, "slave", uint::<u8>(1, 247));
        let profile = u.required(ctx, "profile", name);
        let address = u.field(ctx, "address", parsed::<dlt645::Address>);
        if let Some(slave) = slave {
            if let Some(first) = seen.insert(slave, u.key("slave")) {
                ctx.err(
                    &u.key("slave"),
                    u.get("slave"),
                    format!("slave {slave} is already a unit at {first}"),
                );
            }
        }
        let Some(address) = address.optional() else {
            continue;
        };
        if let (Some(slave), Some(profile), Some(value)) = (slave, profile, u.get("profile")) {
            out.push(UnitRef {
                slave,
                profile,
                path: u.key("profile"),
                value: value.clone(),
                address: address
                    .zip(u.get("address"))
                    .map(|(a, v)| (a, u.key("address"), v.clone())),
            });
        }
    }
    out
}

/// Looks each unit's profile up: it must be defined and have no units itself. A DL/T 645
/// meter on a bus of several needs an address of its own (`auto` reads the only one), and
/// two meters cannot share one.
fn resolve_units(
    ctx: &mut Ctx<'_>,
    units: Vec<UnitRef>,
    data: &DataSettings,
    index: &ProfileIndex,
) -> Vec<Unit> {
    let mut out = Vec::new();
    let several = units.len() > 1;
    let mut addresses: BTreeMap<String, String> = BTreeMap::new();
    for u in units {
        let problem = match (
            data.profiles.get(&u.profile),
            index.profiles.get(&u.profile),
        ) {
            (Some(profile), _) => {
                let given = u.address.as_ref().map(|(a, _, _)| *a);
                match (profile.meter, &u.address) {
                    (Meter::Dlt645(own), _) => match given.or(own) {
                        Some(address) => {
                            if let Some(first) = addresses.insert(address.printed(), u.path.clone())
                            {
                                ctx.err(
                                    &u.path,
                                    Some(&u.value),
                                    format!("meter address {address} is already the unit at {first}"),
                                );
                            }
                        }
                        None if several => ctx.err(
                            &u.path,
                            Some(&u.value),
                            format!(
                                "profile {:?} reads its meter's address (address = \"auto\"), which \
                                 only works with one meter on the bus: give this unit address = \
                                 \"<12 digits>\"",
                                u.profile
                            ),
                        ),
                        None => {}
                    },
                    (_, Some((_, path, value))) => ctx.err(
                        path,
                        Some(value),
                        format!(
                            "only a DL/T 645 meter has an address; profile {:?} is a Modbus slave",
                            u.profile
                        ),
                    ),
                    (_, None) => {}
                }
                out.push(Unit {
                    slave: u.slave,
                    profile: profile.clone(),
                    address: given,
                });
                continue;
            }
            (None, None) => format!("profile {:?} is not defined in {}", u.profile, index.file),
            (None, Some(info)) if info.has_units => format!(
                "profile {:?} has units of its own; a unit is one slave",
                u.profile
            ),
            // A profile with problems of its own, reported where they are.
            (None, Some(_)) => continue,
        };
        ctx.err(&u.path, Some(&u.value), problem);
    }
    out
}

/// One profile, and the units it names (looked up once every profile is read).
fn profile(
    ctx: &mut Ctx<'_>,
    profile_name: &str,
    path: &str,
    v: &Value,
) -> Option<(Profile, Vec<UnitRef>)> {
    let s = Section::new(
        ctx,
        path,
        v,
        &[
            "slave",
            "response_timeout",
            "retries",
            "polls",
            "points",
            "commands",
            "rules",
            "registration",
            "heartbeat",
            "units",
            "max_failed",
            "modbus",
            "meter",
            "address",
        ],
    )?;
    let meter = meter(ctx, &s);
    // Read as a meter even when its other keys have problems, so every problem is reported.
    let dlt645 =
        matches!(&s.get("meter").map(|v| &v.kind), Some(ValueKind::String(m)) if m == "dlt645");
    let slave = s.field(ctx, "slave", uint::<u8>(1, 247)).or(1);
    let response_timeout = s
        .field(ctx, "response_timeout", duration)
        .or(Duration::from_secs(2));
    let retries = s
        .field(ctx, "retries", uint::<u32>(0, u32::MAX.into()))
        .or(1);

    let poll_items = list(ctx, &s, "polls");
    let polls: Vec<Option<Poll>> = poll_items
        .iter()
        .enumerate()
        .map(|(i, item)| poll(ctx, &index_path(&s.key("polls"), i), item))
        .collect();
    report_duplicates(ctx, "poll", &peek_names(&s.key("polls"), poll_items));

    let point_items = list(ctx, &s, "points");
    let point_names = peek_names(&s.key("points"), point_items);
    report_duplicates(ctx, "point", &point_names);
    let known_points: BTreeSet<&str> = point_names.iter().map(|(_, n)| n.as_str()).collect();
    let mut points = Vec::new();
    let mut polls = polls;
    if dlt645 {
        // Each point of a DL/T 645 meter is a read of its own, on its own schedule.
        polls = point_items
            .iter()
            .enumerate()
            .map(|(i, item)| dlt645_point(ctx, &index_path(&s.key("points"), i), item))
            .collect();
    } else {
        let all_polls_valid = polls.iter().all(Option::is_some);
        let valid_polls: Vec<&Poll> = polls.iter().flatten().collect();
        for (i, item) in point_items.iter().enumerate() {
            let path = index_path(&s.key("points"), i);
            if let Some(p) = point(ctx, &path, item) {
                // With a broken poll, "outside every poll" would only repeat that problem.
                if all_polls_valid {
                    check_coverage(ctx, &path, item, &p, &valid_polls);
                }
                points.push(p);
            }
        }
        if meter == Some(Meter::ModbusTcp) {
            for (i, poll) in polls.iter().enumerate() {
                if poll
                    .as_ref()
                    .is_some_and(|p| p.trigger == PollTrigger::Passive)
                {
                    let key = child_path(&index_path(&s.key("polls"), i), "trigger");
                    ctx.err(
                        &key,
                        None,
                        "a passive poll is an RTU answer the DTU sends up; a Modbus TCP slave \
                         (modbus = \"tcp\") has none",
                    );
                }
            }
        }
    }

    let command_items = list(ctx, &s, "commands");
    report_duplicates(
        ctx,
        "command",
        &peek_names(&s.key("commands"), command_items),
    );
    let commands: Vec<Option<NamedCommand>> = command_items
        .iter()
        .enumerate()
        .map(|(i, item)| command(ctx, &index_path(&s.key("commands"), i), item, &known_points))
        .collect();

    let rule_items = list(ctx, &s, "rules");
    report_duplicates(ctx, "rule", &peek_names(&s.key("rules"), rule_items));
    let rules: Vec<Option<Rule>> = rule_items
        .iter()
        .enumerate()
        .map(|(i, item)| rule(ctx, &index_path(&s.key("rules"), i), item, &known_points))
        .collect();

    let registration = s.field(ctx, "registration", registration).optional();
    let heartbeat = s.field(ctx, "heartbeat", heartbeat).optional();
    let units = units(ctx, &s);
    let max_failed = s
        .field(ctx, "max_failed", uint::<u32>(1, u32::MAX.into()))
        .or(3);
    if dlt645 {
        // A meter is read by data identifier; it has no slave, blocks or Modbus writes.
        for (key, why) in [
            ("slave", "its address is `address`"),
            ("polls", "each point is a read of its own (di, every)"),
            (
                "commands",
                "writes need the meter's passwords and are not supported",
            ),
        ] {
            if s.get(key).is_some() {
                ctx.err(
                    &s.key(key),
                    s.get(key),
                    format!("a DL/T 645 meter (meter = \"dlt645\") has no {key}: {why}"),
                );
            }
        }
    }
    if !units.is_empty() {
        // A bus is polled through its units; its own polls would have no slave to go to.
        for key in [
            "slave", "polls", "points", "commands", "rules", "modbus", "meter", "address",
        ] {
            if s.get(key).is_some() {
                ctx.err(
                    &s.key(key),
                    s.get(key),
                    format!("a profile with units has no {key} of its own: each unit's profile has them"),
                );
            }
        }
    }

    let profile = Profile {
        name: profile_name.to_string(),
        slave: slave?,
        response_timeout: response_timeout?,
        retries: retries?,
        polls: polls.into_iter().collect::<Option<_>>()?,
        points,
        commands: commands.into_iter().collect::<Option<_>>()?,
        rules: rules.into_iter().collect::<Option<_>>()?,
        registration: registration?,
        heartbeat: heartbeat?,
        units: Vec::new(),
        max_failed: max_failed?,
        meter: meter?,
    };
    Some((profile, units))
}

/// The array at `key` (empty when missing or not an array; the latter is recorded).
fn list<'a>(ctx: &mut Ctx<'_>, s: &Section<'a>, key: &str) -> &'a [Value] {
    s.field(ctx, key, array).or(&[]).unwrap_or(&[])
}

/// The `name` of each table in `items` that has a string one, with its path, for the
/// duplicate and reference checks (problems with the names themselves are reported elsewhere).
fn peek_names(path: &str, items: &[Value]) -> Vec<(String, String)> {
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| match &item.kind {
            ValueKind::Table(t) => match t.get("name").map(|n| &n.kind) {
                Some(ValueKind::String(n)) => {
                    Some((child_path(&index_path(path, i), "name"), n.clone()))
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// What the slave speaks: `modbus = "rtu" | "tcp"` (default rtu), or `meter = "dlt645"` with
/// its `address` (12 digits, or "auto", the default).
fn meter(ctx: &mut Ctx<'_>, s: &Section<'_>) -> Option<Meter> {
    let kind = s.field(ctx, "meter", |ctx, path, v| {
        match string(ctx, path, v)?.as_str() {
            "dlt645" => Some(true),
            "modbus" => Some(false),
            other => {
                ctx.err(
                    path,
                    Some(v),
                    format!("unknown meter {other:?} (expected dlt645, or modbus, the default)"),
                );
                None
            }
        }
    });
    let modbus = s.field(ctx, "modbus", |ctx, path, v| {
        match string(ctx, path, v)?.as_str() {
            "rtu" => Some(Meter::ModbusRtu),
            "tcp" => Some(Meter::ModbusTcp),
            other => {
                ctx.err(
                    path,
                    Some(v),
                    format!("unknown Modbus framing {other:?} (expected rtu or tcp)"),
                );
                None
            }
        }
    });
    let address = s.field(ctx, "address", |ctx, path, v| {
        let text = string(ctx, path, v)?;
        if text == "auto" {
            return Some(None);
        }
        match text.parse::<dlt645::Address>() {
            Ok(a) => Some(Some(a)),
            Err(e) => {
                ctx.err(path, Some(v), format!("{e}, or \"auto\""));
                None
            }
        }
    });
    match kind.or(false)? {
        true => {
            if let Some(framing) = s.get("modbus") {
                ctx.err(
                    &s.key("modbus"),
                    Some(framing),
                    "a DL/T 645 meter (meter = \"dlt645\") speaks no Modbus: modbus = \"tcp\" or \
                     \"rtu\" does not go with it",
                );
                return None;
            }
            Some(Meter::Dlt645(address.or(None)?))
        }
        false => {
            if let Some(value) = s.get("address") {
                ctx.err(
                    &s.key("address"),
                    Some(value),
                    "only a DL/T 645 meter (meter = \"dlt645\") has an address; a Modbus slave's \
                     is `slave`",
                );
                return None;
            }
            modbus.or(Meter::ModbusRtu)
        }
    }
}

/// When a poll runs: `every = "30s"`, or `trigger = "heartbeat"` (or, where `passive` may,
/// `"passive"`); exactly one of them.
fn schedule(
    ctx: &mut Ctx<'_>,
    s: &Section<'_>,
    path: &str,
    v: &Value,
    passive: bool,
) -> Option<PollTrigger> {
    let every = s.field(ctx, "every", duration);
    let trigger = s.field(ctx, "trigger", trigger);
    match (every, trigger) {
        (Field::Value(d), Field::Missing) => Some(PollTrigger::Every(d)),
        (Field::Missing, Field::Value(PollTrigger::Passive)) if !passive => {
            ctx.err(
                &s.key("trigger"),
                s.get("trigger"),
                "a DL/T 645 point is read by the server: use every = \"30s\" or trigger = \"heartbeat\"",
            );
            None
        }
        (Field::Missing, Field::Value(t)) => Some(t),
        (Field::Missing, Field::Missing) => {
            let message = if passive {
                "needs every = \"30s\" (a timer), trigger = \"heartbeat\" or trigger = \"passive\""
            } else {
                "needs every = \"30s\" (a timer) or trigger = \"heartbeat\""
            };
            ctx.err(path, Some(v), message);
            None
        }
        (every, trigger) => {
            if every.is_present() && trigger.is_present() {
                ctx.err(path, Some(v), "has both every and trigger; use one");
            }
            None
        }
    }
}

/// A point of a DL/T 645 meter: one data identifier read on its own schedule. The format
/// (and the unit, unless given) come from the table of known identifiers, or from `format`.
fn dlt645_point(ctx: &mut Ctx<'_>, path: &str, v: &Value) -> Option<Poll> {
    let s = Section::new(
        ctx,
        path,
        v,
        &["name", "di", "every", "trigger", "unit", "format"],
    )?;
    let point_name = s.required(ctx, "name", name);
    let di = s.required(ctx, "di", parsed::<Di>);
    let format = s.field(ctx, "format", parsed::<formats::Format>).optional();
    let unit = s.field(ctx, "unit", string).optional();
    let trigger = schedule(ctx, &s, path, v, false);
    let (di, format, unit) = (di?, format?, unit?);
    let known = formats::known(di);
    let Some(format) = format.or(known.map(|k| k.format)) else {
        ctx.err(
            &s.key("di"),
            s.get("di"),
            format!(
                "data identifier {di} is not in the table of known formats: give its format, \
                 e.g. format = \"XXXXXX.XX\""
            ),
        );
        return None;
    };
    Some(Poll {
        name: point_name?,
        trigger: trigger?,
        read: PollRead::Dlt645 {
            di,
            format,
            unit: unit
                .or(known.map(|k| k.unit.to_string()))
                .unwrap_or_default(),
        },
    })
}

fn poll(ctx: &mut Ctx<'_>, path: &str, v: &Value) -> Option<Poll> {
    let s = Section::new(
        ctx,
        path,
        v,
        &["name", "function", "start", "count", "every", "trigger"],
    )?;
    let poll_name = s.required(ctx, "name", name);
    let function = s.required(ctx, "function", int_in(i128::MIN, i128::MAX));
    let function = function.and_then(|f| match u8::try_from(f) {
        Ok(f @ 1..=4) => Some(f),
        _ => {
            ctx.err(
                &s.key("function"),
                s.get("function"),
                format!(
                    "function {f} cannot poll: use 1 (coils), 2 (discrete inputs), 3 (holding registers) or 4 (input registers)"
                ),
            );
            None
        }
    });
    let start = s.required(ctx, "start", uint::<u16>(0, 65535));
    let count = s.required(ctx, "count", uint::<u16>(0, 65535));
    let count = count.and_then(|c| {
        let (limit, what) = match function {
            Some(1 | 2) => (MAX_READ_BITS, "bits"),
            Some(_) => (MAX_READ_REGISTERS, "registers"),
            None => (MAX_READ_BITS, "items"),
        };
        let problem = if c == 0 {
            Some("must be at least 1".to_string())
        } else if c > limit {
            Some(format!(
                "{c} is over the Modbus limit of {limit} {what} per read"
            ))
        } else {
            start
                .filter(|st| u32::from(*st) + u32::from(c) - 1 > 65535)
                .map(|st| format!("{c} from {st} runs past address 65535"))
        };
        match problem {
            Some(message) => {
                ctx.err(&s.key("count"), s.get("count"), message);
                None
            }
            None => Some(c),
        }
    });
    let trigger = schedule(ctx, &s, path, v, true);
    Some(Poll {
        name: poll_name?,
        trigger: trigger?,
        read: PollRead::Block(Block {
            function: function?,
            start: start?,
            count: count?,
        }),
    })
}

fn trigger(ctx: &mut Ctx<'_>, path: &str, v: &Value) -> Option<PollTrigger> {
    match string(ctx, path, v)?.as_str() {
        "heartbeat" => Some(PollTrigger::Heartbeat),
        "passive" => Some(PollTrigger::Passive),
        t => {
            ctx.err(
                path,
                Some(v),
                format!(
                    "unknown trigger {t:?} (heartbeat or passive; use every = \"30s\" for a timer)"
                ),
            );
            None
        }
    }
}

fn point(ctx: &mut Ctx<'_>, path: &str, v: &Value) -> Option<Point> {
    let s = Section::new(
        ctx,
        path,
        v,
        &[
            "name", "address", "type", "order", "scale", "offset", "unit", "bit",
        ],
    )?;
    let point_name = s.required(ctx, "name", name);
    let address = s.required(ctx, "address", uint::<u16>(0, 65535));
    let ty = s.required(ctx, "type", parsed::<PointType>);
    let order = s
        .field(ctx, "order", parsed::<WordOrder>)
        .or(WordOrder::Abcd);
    let scale = s.field(ctx, "scale", float).or(1.0);
    let offset = s.field(ctx, "offset", float).or(0.0);
    let unit = s.field(ctx, "unit", string).or(String::new());
    let bit = s.field(ctx, "bit", uint::<u8>(0, 15)).optional();
    if let (Some(ty), Some(Some(_))) = (ty, bit) {
        if ty != PointType::Bool {
            ctx.err(
                &s.key("bit"),
                s.get("bit"),
                format!("only bool points take a bit (this one is {ty})"),
            );
            return None;
        }
    }
    if let (Some(ty), Some(address)) = (ty, address) {
        if u32::from(address) + u32::from(ty.registers()) - 1 > 65535 {
            ctx.err(
                &s.key("address"),
                s.get("address"),
                format!(
                    "a {ty} at {address} needs {} registers, past address 65535",
                    ty.registers()
                ),
            );
            return None;
        }
    }
    Some(Point {
        name: point_name?,
        address: address?,
        ty: ty?,
        order: order?,
        scale: scale?,
        offset: offset?,
        unit: unit?,
        bit: bit?,
    })
}

/// A point must be read by some poll, whole: numbers (and bools taken from a register bit)
/// need a register poll (function 3/4); a plain bool may sit in any poll.
fn check_coverage(ctx: &mut Ctx<'_>, path: &str, v: &Value, p: &Point, polls: &[&Poll]) {
    let first = p.address;
    let last = p.address.saturating_add(p.ty.registers() - 1);
    let any_poll = p.ty == PointType::Bool && p.bit.is_none();
    let blocks: Vec<(&str, Block)> = polls
        .iter()
        .filter_map(|poll| poll.block().map(|b| (poll.name.as_str(), b)))
        .collect();
    let fits = |(_, block): &&(&str, Block)| any_poll || block.reads_registers();
    let candidates: Vec<&(&str, Block)> = blocks.iter().filter(fits).collect();
    if candidates
        .iter()
        .any(|(_, poll)| poll.start <= first && last <= poll.end())
    {
        return;
    }
    let key = child_path(path, "address");
    let value = match &v.kind {
        ValueKind::Table(t) => t.get("address"),
        _ => None,
    };
    let message = if let Some((name, poll)) = candidates
        .iter()
        .find(|(_, poll)| poll.start <= first && first <= poll.end())
    {
        format!(
            "this {} spans {first}..={last} but poll {name:?} ends at {}",
            p.ty,
            poll.end()
        )
    } else if let Some((name, poll)) = blocks
        .iter()
        .find(|(_, poll)| poll.start <= first && first <= poll.end())
    {
        format!(
            "address {first} is in poll {name:?}, which reads {}; a {} point{} needs a register poll (function 3 or 4)",
            if poll.function == 1 { "coils" } else { "discrete inputs" },
            p.ty,
            if p.bit.is_some() { " with a bit" } else { "" }
        )
    } else if polls.is_empty() {
        format!("address {first} is outside every poll's range (the profile has no polls)")
    } else {
        let ranges: Vec<String> = blocks
            .iter()
            .map(|(name, poll)| format!("{name} {}..={}", poll.start, poll.end()))
            .collect();
        format!(
            "address {first} is outside every poll's range ({})",
            ranges.join(", ")
        )
    };
    ctx.err(&key, value, message);
}

fn command(
    ctx: &mut Ctx<'_>,
    path: &str,
    v: &Value,
    points: &BTreeSet<&str>,
) -> Option<NamedCommand> {
    let s = Section::new(ctx, path, v, &["name", "write", "require"])?;
    let command_name = s.required(ctx, "name", name);
    let write = s.required(ctx, "write", write_spec);
    let require = s
        .field(ctx, "require", |ctx, path, v| require(ctx, path, v, points))
        .optional();
    Some(NamedCommand {
        name: command_name?,
        write: write?,
        require: require?,
    })
}

/// A register value: 0..=65535, or -32768..=-1 written as its two's complement.
fn register_value(ctx: &mut Ctx<'_>, path: &str, v: &Value) -> Option<u16> {
    int_in(-32768, 65535)(ctx, path, v)
        .and_then(|n| u16::try_from(if n < 0 { n + 65536 } else { n }).ok())
}

fn write_spec(ctx: &mut Ctx<'_>, path: &str, v: &Value) -> Option<WriteSpec> {
    let s = Section::new(ctx, path, v, &["address", "value", "values", "coil"])?;
    let address = s.required(ctx, "address", uint::<u16>(0, 65535));
    let value = s.field(ctx, "value", register_value);
    let values = s.field(ctx, "values", array_of(register_value));
    let coil = s.field(ctx, "coil", super::tree::boolean);
    let given = [value.is_present(), values.is_present(), coil.is_present()]
        .iter()
        .filter(|p| **p)
        .count();
    if given != 1 {
        let message = if given == 0 {
            "needs one of value = N, values = [..] or coil = true/false"
        } else {
            "takes only one of value, values, coil"
        };
        ctx.err(path, Some(v), message);
        return None;
    }
    let address = address?;
    match (value, values, coil) {
        (Field::Value(value), _, _) => Some(WriteSpec::Register { address, value }),
        (_, Field::Value(values), _) => {
            let problem = if values.is_empty() {
                Some("must not be empty".to_string())
            } else if values.len() > MAX_WRITE_REGISTERS {
                Some(format!(
                    "{} values is over the Modbus limit of {MAX_WRITE_REGISTERS} registers per write",
                    values.len()
                ))
            } else if usize::from(address) + values.len() - 1 > 65535 {
                Some(format!(
                    "{} values from {address} run past address 65535",
                    values.len()
                ))
            } else {
                None
            };
            if let Some(message) = problem {
                ctx.err(&s.key("values"), s.get("values"), message);
                return None;
            }
            Some(WriteSpec::Registers { address, values })
        }
        (_, _, Field::Value(value)) => Some(WriteSpec::Coil { address, value }),
        _ => None,
    }
}

fn require(ctx: &mut Ctx<'_>, path: &str, v: &Value, points: &BTreeSet<&str>) -> Option<Require> {
    let s = Section::new(ctx, path, v, &["point", "equals", "message"])?;
    let point = s.required(ctx, "point", name);
    let point = point.and_then(|p| known_point(ctx, &s, p, points));
    let equals = s.required(ctx, "equals", float);
    let message = s.field(ctx, "message", string).optional()?;
    let (point, equals) = (point?, equals?);
    let message = message.unwrap_or_else(|| format!("{point} must equal {equals}"));
    Some(Require {
        point,
        equals,
        message,
    })
}

/// `point` if the profile defines it; else the problem is recorded at `s.point`.
fn known_point(
    ctx: &mut Ctx<'_>,
    s: &Section<'_>,
    point: String,
    points: &BTreeSet<&str>,
) -> Option<String> {
    if points.contains(point.as_str()) {
        return Some(point);
    }
    let known: Vec<&str> = points.iter().copied().take(20).collect();
    let known = if known.is_empty() {
        "the profile has no points".to_string()
    } else {
        format!("points: {}", known.join(", "))
    };
    ctx.err(
        &s.key("point"),
        s.get("point"),
        format!("unknown point {point:?} ({known})"),
    );
    None
}

fn rule(ctx: &mut Ctx<'_>, path: &str, v: &Value, points: &BTreeSet<&str>) -> Option<Rule> {
    let s = Section::new(
        ctx,
        path,
        v,
        &["name", "point", "above", "below", "hysteresis"],
    )?;
    let rule_name = s.required(ctx, "name", name);
    let point = s.required(ctx, "point", name);
    let point = point.and_then(|p| known_point(ctx, &s, p, points));
    let above = s.field(ctx, "above", float).optional();
    let below = s.field(ctx, "below", float).optional();
    let hysteresis = s.field(ctx, "hysteresis", float).or(0.0);
    let hysteresis = hysteresis.and_then(|h| {
        if h < 0.0 {
            ctx.err(
                &s.key("hysteresis"),
                s.get("hysteresis"),
                "must not be negative",
            );
            None
        } else {
            Some(h)
        }
    });
    let (above, below) = (above?, below?);
    match (above, below) {
        (None, None) => {
            ctx.err(path, Some(v), "needs above = N or below = N (or both)");
            return None;
        }
        (Some(a), Some(b)) if a <= b => {
            ctx.err(
                path,
                Some(v),
                format!("above ({a}) must be greater than below ({b}), else the rule is always triggered"),
            );
            return None;
        }
        _ => {}
    }
    Some(Rule {
        name: rule_name?,
        point: point?,
        above,
        below,
        hysteresis: hysteresis?,
    })
}

fn registration(ctx: &mut Ctx<'_>, path: &str, v: &Value) -> Option<Registration> {
    let s = Section::new(
        ctx,
        path,
        v,
        &["format", "pattern", "length", "reply", "mode"],
    )?;
    let format = s
        .field(ctx, "format", parsed::<IdFormat>)
        .or(IdFormat::Ascii);
    let mode = s
        .field(ctx, "mode", parsed::<RegistrationMode>)
        .or(RegistrationMode::Connect);
    let pattern = s.field(ctx, "pattern", |ctx, path, v| {
        let p = string(ctx, path, v)?;
        match regex::Regex::new(&p) {
            Ok(r) => Some(r),
            Err(e) => {
                // regex's messages draw a caret over several lines; the last line says it.
                let text = e.to_string();
                let reason = text.lines().last().unwrap_or_default().trim();
                let reason = reason.strip_prefix("error: ").unwrap_or(reason);
                ctx.err(path, Some(v), format!("invalid regex {p:?}: {reason}"));
                None
            }
        }
    });
    let length = s.field(ctx, "length", uint::<usize>(1, 65535));
    let reply = s.field(ctx, "reply", hex_bytes).or(Vec::new());
    let matcher = match (pattern, length) {
        (Field::Value(r), Field::Missing) => Some(IdMatcher::Pattern(r)),
        (Field::Missing, Field::Value(n)) => Some(IdMatcher::Length(n)),
        (Field::Missing, Field::Missing) => {
            ctx.err(path, Some(v), "needs pattern = \"regex\" or length = N");
            None
        }
        (pattern, length) => {
            if pattern.is_present() && length.is_present() {
                ctx.err(path, Some(v), "has both pattern and length; use one");
            }
            None
        }
    };
    Some(Registration {
        format: format?,
        matcher: matcher?,
        reply: reply?,
        mode: mode?,
    })
}

fn heartbeat(ctx: &mut Ctx<'_>, path: &str, v: &Value) -> Option<Heartbeat> {
    let s = Section::new(ctx, path, v, &["ascii", "hex", "reply"])?;
    let ascii = s.field(ctx, "ascii", |ctx, path, v| {
        string(ctx, path, v).map(String::into_bytes)
    });
    let hex = s.field(ctx, "hex", hex_bytes);
    let reply = s.field(ctx, "reply", hex_bytes).or(Vec::new());
    let bytes = match (ascii, hex) {
        (Field::Value(b), Field::Missing) | (Field::Missing, Field::Value(b)) => {
            if b.is_empty() {
                ctx.err(path, Some(v), "the heartbeat must be at least one byte");
                None
            } else {
                Some(b)
            }
        }
        (Field::Missing, Field::Missing) => {
            ctx.err(path, Some(v), "needs ascii = \"..\" or hex = \"..\"");
            None
        }
        (ascii, hex) => {
            if ascii.is_present() && hex.is_present() {
                ctx.err(path, Some(v), "has both ascii and hex; use one");
            }
            None
        }
    };
    Some(Heartbeat {
        bytes: bytes?,
        reply: reply?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::tree::EnvVars;
    use config::{File, FileFormat, Source};

    /// Validates `text` as a data file, returning the settings and the problems as strings.
    fn check(text: &str) -> (DataSettings, Vec<String>) {
        let map = File::from_str(text, FileFormat::Toml)
            .collect()
            .unwrap_or_else(|e| panic!("bad test TOML: {e}"));
        let root = Value::new(None, ValueKind::Table(map));
        let env = EnvVars::default();
        let mut ctx = Ctx::new("data.toml", &env);
        let (data, _) = validate(&mut ctx, &root);
        (data, ctx.errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn negative_register_values_are_twos_complement() {
        let (data, errors) =
            check("[[profiles.p.commands]]\nname = \"c\"\nwrite = { address = 1, value = -2 }\n");
        assert!(errors.is_empty(), "{errors:?}");
        let c = data.profiles["p"].command("c").map(|c| c.write.clone());
        assert_eq!(
            c,
            Some(WriteSpec::Register {
                address: 1,
                value: 0xFFFE
            })
        );
        let (_, errors) = check(
            "[[profiles.p.commands]]\nname = \"c\"\nwrite = { address = 1, value = 65536 }\n",
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
    }

    #[test]
    fn coverage_accepts_a_point_in_any_fitting_poll() {
        let base = r#"
[[profiles.p.polls]]
name = "a"
function = 4
start = 0
count = 2
every = "1s"
[[profiles.p.polls]]
name = "b"
function = 3
start = 1
count = 4
every = "1s"
[[profiles.p.points]]
name = "x"
address = 1
type = "f32"
"#;
        // Crosses the end of "a" but lies whole in "b": fine.
        let (data, errors) = check(base);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            data.profiles["p"].polls[1].block().map(|b| b.end()),
            Some(4)
        );
        // An f64 at 1 needs 1..=4: still inside "b".
        let (_, errors) = check(&base.replace("\"f32\"", "\"f64\""));
        assert!(errors.is_empty(), "{errors:?}");
        // At 2 it needs 2..=5, past both.
        let (_, errors) = check(
            &base
                .replace("\"f32\"", "\"f64\"")
                .replace("address = 1", "address = 2"),
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("points[0].address: this f64 spans 2..=5"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_profile_with_problems_is_left_out() {
        let (data, errors) = check("[profiles.good]\n[profiles.bad]\nslave = 0\n");
        assert_eq!(errors.len(), 1);
        let names: Vec<&str> = data.profiles.keys().map(String::as_str).collect();
        assert_eq!(names, ["good"]);
    }

    const UNIT_PROFILES: &str = r#"
[profiles.meter]
[[profiles.meter.polls]]
name = "block"
function = 3
start = 0
count = 2
every = "1s"
[[profiles.meter.points]]
name = "voltage"
address = 0
type = "u16"

[profiles.plc]
slave = 9
[[profiles.plc.polls]]
name = "coils"
function = 1
start = 0
count = 8
every = "1s"
"#;

    #[test]
    fn units_name_a_slave_and_a_profile_each() {
        let text = format!(
            "{UNIT_PROFILES}
[profiles.bus]
response_timeout = \"1s\"
max_failed = 5
[[profiles.bus.units]]
slave = 1
profile = \"meter\"
[[profiles.bus.units]]
slave = 7
profile = \"plc\"
"
        );
        let (data, errors) = check(&text);
        assert!(errors.is_empty(), "{errors:?}");
        let bus = &data.profiles["bus"];
        assert_eq!(bus.max_failed, 5);
        let units: Vec<(u8, &str)> = bus
            .units
            .iter()
            .map(|u| (u.slave, u.profile.name.as_str()))
            .collect();
        assert_eq!(units, vec![(1, "meter"), (7, "plc")]);
        // The unit profiles are profiles like any other; without units, max_failed is 3.
        assert!(data.profiles["meter"].units.is_empty());
        assert_eq!(data.profiles["meter"].max_failed, 3);
    }

    #[test]
    fn bad_units_are_reported_at_their_keys() {
        let text = format!(
            "{UNIT_PROFILES}
[profiles.bus]
[[profiles.bus.units]]
slave = 0
profile = \"meter\"
[[profiles.bus.units]]
slave = 7
profile = \"nope\"
[[profiles.bus.units]]
slave = 7
profile = \"plc\"
[[profiles.bus.units]]
slave = 8
profile = \"bus2\"

[profiles.bus2]
[[profiles.bus2.units]]
slave = 2
profile = \"meter\"
[[profiles.bus2.polls]]
name = \"own\"
function = 3
start = 0
count = 1
every = \"1s\"
"
        );
        let (data, errors) = check(&text);
        let has = |key: &str, what: &str| {
            assert!(
                errors.iter().any(|e| e.contains(key) && e.contains(what)),
                "no error at {key} saying {what:?} in {errors:#?}"
            )
        };
        has("profiles.bus.units[0].slave", "1..=247");
        has("profiles.bus.units[1].profile", "\"nope\" is not defined");
        has("profiles.bus.units[2].slave", "slave 7 is already a unit");
        has("profiles.bus.units[3].profile", "has units of its own");
        has(
            "profiles.bus2.polls",
            "a profile with units has no polls of its own",
        );
        assert!(!data.profiles.contains_key("bus") && !data.profiles.contains_key("bus2"));
        assert!(data.profiles.contains_key("meter"));
    }

    #[test]
    fn passive_polls_are_never_sent_and_need_no_timer() {
        let (data, errors) = check(
            "[profiles.p]\n[[profiles.p.polls]]\nname = \"auto\"\nfunction = 3\nstart = 0\ncount = 2\ntrigger = \"passive\"\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(data.profiles["p"].polls[0].trigger, PollTrigger::Passive);
        let (_, errors) = check(
            "[profiles.p]\n[[profiles.p.polls]]\nname = \"auto\"\nfunction = 3\nstart = 0\ncount = 2\ntrigger = \"passive\"\nevery = \"1s\"\n",
        );
        assert!(
            errors.iter().any(|e| e.contains("both every and trigger")),
            "{errors:?}"
        );
    }

    #[test]
    fn modbus_framing_defaults_to_rtu() {
        let meter = |extra: &str| {
            let (data, errors) = check(&format!("[profiles.p]\n{extra}"));
            (data.profiles.get("p").map(|p| p.meter), errors)
        };
        assert_eq!(meter(""), (Some(Meter::ModbusRtu), vec![]));
        assert_eq!(meter("modbus = \"rtu\""), (Some(Meter::ModbusRtu), vec![]));
        assert_eq!(meter("modbus = \"tcp\""), (Some(Meter::ModbusTcp), vec![]));
        assert_eq!(
            meter("modbus = \"ascii\""),
            (
                None,
                vec!["data.toml: profiles.p.modbus: unknown Modbus framing \"ascii\" (expected rtu or tcp)".to_string()]
            )
        );
        // A passive poll is an RTU answer: not for a Modbus TCP slave.
        let (_, errors) = check(
            "[profiles.p]\nmodbus = \"tcp\"\n[[profiles.p.polls]]\nname = \"auto\"\nfunction = 3\nstart = 0\ncount = 2\ntrigger = \"passive\"\n",
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("profiles.p.polls[0].trigger: a passive poll"),
            "{errors:?}"
        );
    }

    const METER: &str = r#"
[profiles.m]
meter = "dlt645"
response_timeout = "2s"
[[profiles.m.points]]
name = "energy_total"
di = "00010000"
every = "60s"
[[profiles.m.points]]
name = "voltage_a"
di = "02010100"
every = "10s"
unit = "volt"
[[profiles.m.points]]
name = "apparent"
di = "02050000"
format = "-XX.XXXX"
unit = "kVA"
trigger = "heartbeat"
"#;

    #[test]
    fn a_dlt645_meter_reads_each_point_on_its_own_schedule() {
        let (data, errors) = check(METER);
        assert!(errors.is_empty(), "{errors:?}");
        let m = &data.profiles["m"];
        assert_eq!(m.meter, Meter::Dlt645(None), "address defaults to auto");
        assert!(m.points.is_empty());
        let reads: Vec<(&str, String, String, String)> = m
            .polls
            .iter()
            .map(|p| match &p.read {
                PollRead::Dlt645 { di, format, unit } => (
                    p.name.as_str(),
                    di.to_string(),
                    format.to_string(),
                    unit.clone(),
                ),
                PollRead::Block(_) => panic!("{p:?}"),
            })
            .collect();
        assert_eq!(
            reads,
            [
                (
                    "energy_total",
                    "00010000".into(),
                    "XXXXXX.XX".into(),
                    "kWh".into()
                ),
                (
                    "voltage_a",
                    "02010100".into(),
                    "XXX.X".into(),
                    "volt".into()
                ),
                (
                    "apparent",
                    "02050000".into(),
                    "-XX.XXXX".into(),
                    "kVA".into()
                ),
            ]
        );
        assert_eq!(
            m.polls[0].trigger,
            PollTrigger::Every(Duration::from_secs(60))
        );
        assert_eq!(m.polls[2].trigger, PollTrigger::Heartbeat);
        let (data, errors) = check(&METER.replace(
            "meter = \"dlt645\"",
            "meter = \"dlt645\"\naddress = \"123456789012\"",
        ));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            data.profiles["m"].meter,
            Meter::Dlt645(Some("123456789012".parse().expect("address")))
        );
    }

    #[test]
    fn bad_dlt645_settings_are_reported_at_their_keys() {
        let text = r#"
[profiles.m]
meter = "dlt645"
address = "12345"
modbus = "tcp"
slave = 3
[[profiles.m.commands]]
name = "c"
write = { address = 1, value = 1 }
[[profiles.m.points]]
name = "a"
di = "0001000"
every = "1s"
[[profiles.m.points]]
name = "b"
di = "02990000"
every = "1s"
[[profiles.m.points]]
name = "c"
di = "02010100"
format = "XX,X"
every = "1s"
[[profiles.m.points]]
name = "d"
di = "02010100"
trigger = "passive"
[[profiles.m.points]]
name = "e"
di = "02010100"

[profiles.modbus]
address = "123456789012"

[profiles.other]
meter = "iec62056"
"#;
        let (data, errors) = check(text);
        let has = |key: &str, what: &str| {
            assert!(
                errors
                    .iter()
                    .any(|e| e.contains(&format!("{key}: ")) && e.contains(what)),
                "no error at {key} saying {what:?} in {errors:#?}"
            )
        };
        has(
            "profiles.m.address",
            "is not a meter address (12 decimal digits",
        );
        has("profiles.m.modbus", "speaks no Modbus");
        has("profiles.m.slave", "has no slave");
        has("profiles.m.commands", "writes need the meter's passwords");
        has(
            "profiles.m.points[0].di",
            "is not a data identifier (8 hex digits",
        );
        has(
            "profiles.m.points[1].di",
            "02990000 is not in the table of known formats",
        );
        has("profiles.m.points[2].format", "is not a format");
        has("profiles.m.points[3].trigger", "is read by the server");
        has("profiles.m.points[4]", "needs every");
        has("profiles.modbus.address", "only a DL/T 645 meter");
        has("profiles.other.meter", "unknown meter \"iec62056\"");
        assert!(data.profiles.is_empty());
    }

    #[test]
    fn meters_on_a_bus_are_units_with_addresses_of_their_own() {
        let bus = |units: &str| check(&format!("{METER}\n[profiles.bus]\n{units}"));
        let (data, errors) = bus(
            "[[profiles.bus.units]]\nslave = 1\nprofile = \"m\"\naddress = \"000000000001\"\n\
             [[profiles.bus.units]]\nslave = 2\nprofile = \"m\"\naddress = \"000000000002\"\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let addresses: Vec<String> = data.profiles["bus"]
            .units
            .iter()
            .map(|u| u.address.map(|a| a.to_string()).unwrap_or_default())
            .collect();
        assert_eq!(addresses, ["000000000001", "000000000002"]);
        // One meter may read its address; two cannot.
        let (_, errors) = bus("[[profiles.bus.units]]\nslave = 1\nprofile = \"m\"\n");
        assert!(errors.is_empty(), "{errors:?}");
        let (_, errors) = bus("[[profiles.bus.units]]\nslave = 1\nprofile = \"m\"\n\
             [[profiles.bus.units]]\nslave = 2\nprofile = \"m\"\naddress = \"000000000002\"\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("units[0].profile") && errors[0].contains("one meter on the bus"),
            "{errors:?}"
        );
        let (_, errors) = bus(
            "[[profiles.bus.units]]\nslave = 1\nprofile = \"m\"\naddress = \"000000000002\"\n\
             [[profiles.bus.units]]\nslave = 2\nprofile = \"m\"\naddress = \"000000000002\"\n",
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("units[1].profile") && e.contains("already the unit")),
            "{errors:?}"
        );
        let (_, errors) = check(&format!(
            "{UNIT_PROFILES}\n[profiles.bus]\n[[profiles.bus.units]]\nslave = 1\nprofile = \"meter\"\naddress = \"000000000002\"\n"
        ));
        assert!(
            errors
                .iter()
                .any(|e| e.contains("units[0].address") && e.contains("is a Modbus slave")),
            "{errors:?}"
        );
    }

    #[test]
    fn registration_mode_defaults_to_connect() {
        let mode = |extra: &str| {
            let (data, errors) = check(&format!(
                "[profiles.p.registration]\npattern = \"^[0-9]{{15}}$\"\n{extra}"
            ));
            assert!(errors.is_empty(), "{errors:?}");
            data.profiles["p"]
                .registration
                .as_ref()
                .map(|r| r.mode)
                .expect("registration")
        };
        assert_eq!(mode(""), RegistrationMode::Connect);
        assert_eq!(mode("mode = \"connect\""), RegistrationMode::Connect);
        assert_eq!(mode("mode = \"prefix\""), RegistrationMode::Prefix);
        assert_eq!(mode("mode = \"both\""), RegistrationMode::Both);
        let (data, errors) = check("[profiles.p.registration]\nlength = 4\nmode = \"always\"\n");
        assert_eq!(
            errors,
            ["data.toml: profiles.p.registration.mode: unknown mode \"always\" (expected connect, prefix or both)"]
        );
        assert!(!data.profiles.contains_key("p"));
    }
}
