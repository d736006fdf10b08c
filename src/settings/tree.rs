//! Walking the merged `config` value tree by hand.
//!
//! Deserializing straight into structs stops at the first problem; an operator fixing a file
//! wants every problem at once, each with its file and full key path. So the sources are
//! merged by `config` and the resulting generic tree is walked here, every problem recorded
//! and the walk carried on. Values keep their origin (defaults, file or environment) so a
//! problem is blamed on the right place.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use config::{Map, Value, ValueKind};

use super::{parse_duration, SettingsError};

/// Origin tag of values that come from the built-in defaults.
pub(super) const ORIGIN_DEFAULTS: &str = "defaults";
/// Origin tag of values read from the settings file.
pub(super) const ORIGIN_FILE: &str = "file";
/// Origin tag that `config::Environment` gives its values.
pub(super) const ORIGIN_ENV: &str = "the environment";

/// Environment overrides as given, by the key path they set (e.g. `listeners[0].bind`), so
/// errors can name the variable and string settings can get back the exact text that
/// `try_parsing` turned into a number.
#[derive(Debug, Default)]
pub(super) struct EnvVars {
    pub by_path: BTreeMap<String, (String, String)>,
}

/// Collects the problems of one settings file while it is walked.
pub(super) struct Ctx<'e> {
    /// File name as shown to the operator, e.g. `server.toml`.
    pub file: String,
    pub env: &'e EnvVars,
    pub errors: Vec<SettingsError>,
}

impl<'e> Ctx<'e> {
    pub fn new(file: &str, env: &'e EnvVars) -> Self {
        Ctx {
            file: file.to_string(),
            env,
            errors: Vec::new(),
        }
    }

    /// Records a problem at `path`, blamed on where `value` came from.
    pub fn err(&mut self, path: &str, value: Option<&Value>, message: impl Into<String>) {
        let file = self.blame(path, value);
        self.errors.push(SettingsError {
            file,
            key: path.to_string(),
            message: message.into(),
        });
    }

    /// The file label for a problem at `path`: the environment variable that set it, the
    /// file, or the file marked as a built-in default.
    fn blame(&self, path: &str, value: Option<&Value>) -> String {
        let origin = value.and_then(Value::origin);
        if origin == Some(ORIGIN_ENV) || origin.is_none() {
            if let Some((var, _)) = self.env.by_path.get(path) {
                return format!("env {var}");
            }
            // A table that only exists because a variable created it has no origin.
            if origin.is_none() {
                return self.blame_under(path);
            }
        }
        if origin == Some(ORIGIN_DEFAULTS) {
            return format!("{} (built-in default)", self.file);
        }
        self.file.clone()
    }

    /// The first environment variable that sets something below `path`, else the file.
    fn blame_under(&self, path: &str) -> String {
        self.env
            .by_path
            .iter()
            .find(|(p, _)| {
                p.strip_prefix(path)
                    .is_some_and(|rest| rest.starts_with(['.', '[']))
            })
            .map_or_else(|| self.file.clone(), |(_, (var, _))| format!("env {var}"))
    }

    /// Text of a value set through the environment, before `try_parsing` touched it.
    fn env_text(&self, path: &str, value: &Value) -> Option<String> {
        if value.origin() != Some(ORIGIN_ENV) {
            return None;
        }
        self.env.by_path.get(path).map(|(_, text)| text.clone())
    }
}

/// `parent.key`, quoting keys that are not plain identifiers.
pub(super) fn child_path(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-');
    let key = if plain {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// `parent[index]`.
pub(super) fn index_path(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// How a value's kind is named in messages.
pub(super) fn kind_name(v: &Value) -> &'static str {
    match v.kind {
        ValueKind::Nil => "nothing",
        ValueKind::Boolean(_) => "a boolean",
        ValueKind::I64(_) | ValueKind::I128(_) | ValueKind::U64(_) | ValueKind::U128(_) => {
            "an integer"
        }
        ValueKind::Float(_) => "a number with a fraction",
        ValueKind::String(_) => "a string",
        ValueKind::Table(_) => "a table",
        ValueKind::Array(_) => "an array",
    }
}

/// What was found instead of the expected kind, for messages: strings are shown quoted.
pub(super) fn found(v: &Value) -> String {
    match &v.kind {
        ValueKind::String(s) => format!("{s:?}"),
        _ => kind_name(v).to_string(),
    }
}

/// The outcome of reading one key of a table.
pub(super) enum Field<T> {
    /// Not there (or YAML null).
    Missing,
    /// There but wrong; the problem is already recorded.
    Invalid,
    Value(T),
}

impl<T> Field<T> {
    /// The value, or `default` when missing; None when invalid.
    pub fn or(self, default: T) -> Option<T> {
        match self {
            Field::Missing => Some(default),
            Field::Invalid => None,
            Field::Value(v) => Some(v),
        }
    }

    /// Some(None) when missing, None when invalid.
    pub fn optional(self) -> Option<Option<T>> {
        match self {
            Field::Missing => Some(None),
            Field::Invalid => None,
            Field::Value(v) => Some(Some(v)),
        }
    }

    pub fn is_present(&self) -> bool {
        !matches!(self, Field::Missing)
    }
}

/// A table being read: its path and entries.
pub(super) struct Section<'a> {
    pub path: String,
    pub map: Option<&'a Map<String, Value>>,
    /// The table itself, whose origin tells who is to blame for a missing key.
    value: &'a Value,
}

impl<'a> Section<'a> {
    /// Takes `value` as a table (null counts as empty) and reports every key not in `allowed`.
    /// Returns None, with the problem recorded, when `value` is not a table.
    pub fn new(ctx: &mut Ctx<'_>, path: &str, value: &'a Value, allowed: &[&str]) -> Option<Self> {
        let section = Section::open(ctx, path, value)?;
        let unknown: BTreeSet<&String> = section
            .map
            .into_iter()
            .flat_map(|m| m.keys())
            .filter(|k| !allowed.contains(&k.as_str()))
            .collect();
        for key in unknown {
            let v = section.map.and_then(|m| m.get(key));
            let hint = closest(key, allowed)
                .map(|s| format!("; did you mean {s:?}?"))
                .unwrap_or_default();
            ctx.err(
                &section.key(key),
                v,
                format!(
                    "unknown key (expected one of: {}){hint}",
                    allowed.join(", ")
                ),
            );
        }
        Some(section)
    }

    /// Takes `value` as a table whose keys are names (e.g. `profiles`), so any key is allowed.
    pub fn open(ctx: &mut Ctx<'_>, path: &str, value: &'a Value) -> Option<Self> {
        let map = match &value.kind {
            ValueKind::Table(map) => Some(map),
            // A null without origin is a hole `config` made when an environment variable set
            // an array element past the end (DTU__LISTENERS__5__BIND with two listeners).
            ValueKind::Nil if value.origin().is_none() && path.ends_with(']') => {
                let file = ctx.blame_under(path.rsplit_once('[').map_or(path, |(array, _)| array));
                ctx.errors.push(SettingsError {
                    file,
                    key: path.to_string(),
                    message: "no such element: environment overrides can change or append list elements, not leave gaps".into(),
                });
                return None;
            }
            ValueKind::Nil => None,
            _ => {
                ctx.err(
                    path,
                    Some(value),
                    format!("expected a table, found {}", kind_name(value)),
                );
                return None;
            }
        };
        Some(Section {
            path: path.to_string(),
            map,
            value,
        })
    }

    /// The entries, sorted by key so problems come out in a stable order.
    pub fn entries(&self) -> Vec<(&'a String, &'a Value)> {
        let mut entries: Vec<_> = self.map.into_iter().flat_map(|m| m.iter()).collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        entries
    }

    /// Full path of `key` in this table.
    pub fn key(&self, key: &str) -> String {
        child_path(&self.path, key)
    }

    /// The value of `key`, None when missing or null.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map?
            .get(key)
            .filter(|v| !matches!(v.kind, ValueKind::Nil))
    }

    /// Reads `key` with `convert`, which records its own problems.
    pub fn field<T>(
        &self,
        ctx: &mut Ctx<'_>,
        key: &str,
        convert: impl FnOnce(&mut Ctx<'_>, &str, &'a Value) -> Option<T>,
    ) -> Field<T> {
        match self.get(key) {
            None => Field::Missing,
            Some(v) => match convert(ctx, &self.key(key), v) {
                Some(t) => Field::Value(t),
                None => Field::Invalid,
            },
        }
    }

    /// Like [`Section::field`] but records "missing" when the key is absent.
    pub fn required<T>(
        &self,
        ctx: &mut Ctx<'_>,
        key: &str,
        convert: impl FnOnce(&mut Ctx<'_>, &str, &'a Value) -> Option<T>,
    ) -> Option<T> {
        match self.field(ctx, key, convert) {
            Field::Missing => {
                // A table made only by environment variables is theirs to complete.
                let file = if self.value.origin().is_none() {
                    ctx.blame_under(&self.path)
                } else {
                    ctx.blame(&self.path, Some(self.value))
                };
                ctx.errors.push(SettingsError {
                    file,
                    key: self.key(key),
                    message: "missing (required)".into(),
                });
                None
            }
            Field::Invalid => None,
            Field::Value(v) => Some(v),
        }
    }
}

/// The allowed key most like `key`, to suggest for a typo.
fn closest<'s>(key: &str, allowed: &[&'s str]) -> Option<&'s str> {
    allowed
        .iter()
        .map(|a| (distance(key, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

/// Levenshtein distance, for typo hints.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---- conversions: each records its problem at `path` and returns None on failure ----

/// A string. A number or boolean set through the environment is taken as the text given.
pub(super) fn string(ctx: &mut Ctx<'_>, path: &str, v: &Value) -> Option<String> {
    if let ValueKind::String(s) = &v.kind {
        return Some(s.clone());
    }
    if let Some(text) = ctx.env_text(path, v) {
        return Some(text);
    }
    ctx.err(
        path,
        Some(v),
        format!("expected a string, found {}", kind_name(v)),
    );
    None
}

/// A non-empty string.
pub(super) fn name(ctx: &mut Ctx<'_>, path: &str, v: &Value) -> Option<String> {
    let s = string(ctx, path, v)?;
    if s.trim().is_empty() {
        ctx.err(path, Some(v), "must not be empty");
        return None;
    }
    Some(s)
}

/// An integer in `min..=max`; strings holding one are accepted.
pub(super) fn int_in(min: i128, max: i128) -> impl Fn(&mut Ctx<'_>, &str, &Value) -> Option<i128> {
    move |ctx, path, v| {
        let n = match &v.kind {
            ValueKind::I64(n) => Some(i128::from(*n)),
            ValueKind::U64(n) => Some(i128::from(*n)),
            ValueKind::I128(n) => Some(*n),
            ValueKind::U128(n) => i128::try_from(*n).ok().or(Some(i128::MAX)),
            ValueKind::String(s) => s.trim().parse::<i128>().ok(),
            _ => None,
        };
        let Some(n) = n else {
            ctx.err(
                path,
                Some(v),
                format!("expected an integer, found {}", found(v)),
            );
            return None;
        };
        if n < min || n > max {
            let message = if max - min <= 100_000 {
                format!("{n} is out of range ({min}..={max})")
            } else if n < min {
                format!("{n} is too small (at least {min})")
            } else {
                format!("{n} is too large (at most {max})")
            };
            ctx.err(path, Some(v), message);
            return None;
        }
        Some(n)
    }
}

/// An unsigned integer in `min..=max`, converted to `T`.
pub(super) fn uint<T: TryFrom<i128>>(
    min: i128,
    max: i128,
) -> impl Fn(&mut Ctx<'_>, &str, &Value) -> Option<T> {
    move |ctx, path, v| int_in(min, max)(ctx, path, v).and_then(|n| T::try_from(n).ok())
}

/// A finite number; integers and numeric strings are accepted.
pub(super) fn float(ctx: &mut Ctx<'_>, path: &str, v: &Value) -> Option<f64> {
    let n = match &v.kind {
        ValueKind::Float(f) => Some(*f),
        ValueKind::I64(n) => Some(*n as f64),
        ValueKind::U64(n) => Some(*n as f64),
        ValueKind::I128(n) => Some(*n as f64),
        ValueKind::U128(n) => Some(*n as f64),
        ValueKind::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match n {
        Some(f) if f.is_finite() => Some(f),
        Some(_) => {
            ctx.err(path, Some(v), "must be a finite number");
            None
        }
        None => {
            ctx.err(
                path,
                Some(v),
                format!("expected a number, found {}", found(v)),
            );
            None
        }
    }
}

/// A boolean; the strings "true"/"false" (any case) are accepted.
pub(super) fn boolean(ctx: &mut Ctx<'_>, path: &str, v: &Value) -> Option<bool> {
    let b = match &v.kind {
        ValueKind::Boolean(b) => Some(*b),
        ValueKind::String(s) => s.trim().to_ascii_lowercase().parse::<bool>().ok(),
        _ => None,
    };
    if b.is_none() {
        ctx.err(
            path,
            Some(v),
            format!("expected true or false, found {}", found(v)),
        );
    }
    b
}

/// A non-zero duration string such as "30s".
pub(super) fn duration(ctx: &mut Ctx<'_>, path: &str, v: &Value) -> Option<Duration> {
    let text = match &v.kind {
        ValueKind::String(s) => s.clone(),
        _ => match ctx.env_text(path, v) {
            Some(t) => t,
            None => {
                ctx.err(
                    path,
                    Some(v),
                    format!(
                        "expected a duration string like \"30s\", found {}",
                        kind_name(v)
                    ),
                );
                return None;
            }
        },
    };
    match parse_duration(&text) {
        Ok(d) if d.is_zero() => {
            ctx.err(path, Some(v), "must be longer than zero");
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            ctx.err(path, Some(v), e);
            None
        }
    }
}

/// A size in bytes of at least one megabyte: a string with a unit ("2GiB", "500MB"; decimal
/// and binary units, case-insensitive) or an integer count of bytes.
pub(super) fn byte_size(ctx: &mut Ctx<'_>, path: &str, v: &Value) -> Option<u64> {
    let bytes = match &v.kind {
        ValueKind::I64(n) => u64::try_from(*n).ok(),
        ValueKind::U64(n) => Some(*n),
        ValueKind::String(s) => s.trim().parse::<bytesize::ByteSize>().ok().map(|b| b.0),
        _ => None,
    };
    let Some(bytes) = bytes else {
        ctx.err(
            path,
            Some(v),
            format!(
                "expected a size like \"2GiB\" or \"500MB\", found {}",
                found(v)
            ),
        );
        return None;
    };
    if bytes < 1_000_000 {
        ctx.err(path, Some(v), format!("{bytes} bytes is less than 1MB"));
        return None;
    }
    Some(bytes)
}

/// A string parsed with `FromStr` whose error is a ready message.
pub(super) fn parsed<T: FromStr<Err = String>>(
    ctx: &mut Ctx<'_>,
    path: &str,
    v: &Value,
) -> Option<T> {
    let s = string(ctx, path, v)?;
    match s.parse::<T>() {
        Ok(t) => Some(t),
        Err(e) => {
            ctx.err(path, Some(v), e);
            None
        }
    }
}

/// An `IP:PORT` socket address.
pub(super) fn socket_addr(ctx: &mut Ctx<'_>, path: &str, v: &Value) -> Option<SocketAddr> {
    let s = string(ctx, path, v)?;
    match s.trim().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            ctx.err(
                path,
                Some(v),
                format!(
                    "{s:?} is not an IP:PORT address (e.g. \"0.0.0.0:22334\" or \"[::]:22334\")"
                ),
            );
            None
        }
    }
}

/// Bytes written as hex; spaces (and other whitespace) between digits are allowed.
pub(super) fn hex_bytes(ctx: &mut Ctx<'_>, path: &str, v: &Value) -> Option<Vec<u8>> {
    let s = string(ctx, path, v)?;
    let digits: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    match hex::decode(&digits) {
        Ok(b) => Some(b),
        Err(e) => {
            ctx.err(path, Some(v), format!("{s:?} is not hex bytes: {e}"));
            None
        }
    }
}

/// An array (null counts as empty).
pub(super) fn array<'a>(ctx: &mut Ctx<'_>, path: &str, v: &'a Value) -> Option<&'a [Value]> {
    match &v.kind {
        ValueKind::Array(items) => Some(items),
        ValueKind::Nil => Some(&[]),
        _ => {
            ctx.err(
                path,
                Some(v),
                format!("expected an array, found {}", kind_name(v)),
            );
            None
        }
    }
}

/// Every element of an array converted, or None (problems recorded) if any fails.
pub(super) fn array_of<T>(
    convert: impl Fn(&mut Ctx<'_>, &str, &Value) -> Option<T>,
) -> impl Fn(&mut Ctx<'_>, &str, &Value) -> Option<Vec<T>> {
    move |ctx, path, v| {
        let items = array(ctx, path, v)?;
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match convert(ctx, &index_path(path, i), item) {
                Some(t) => out.push(t),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}

/// Reports names used more than once among `names` (path, name) as `what`.
pub(super) fn report_duplicates(ctx: &mut Ctx<'_>, what: &str, names: &[(String, String)]) {
    let mut first: BTreeMap<&str, &str> = BTreeMap::new();
    for (path, name) in names {
        match first.get(name.as_str()) {
            Some(earlier) => {
                let message = format!("duplicate {what} name {name:?} (first used at {earlier})");
                ctx.err(path, None, message);
            }
            None => {
                first.insert(name, path);
            }
        }
    }
}

/// Gives every value in the tree the origin `origin`, so problems can be blamed on it.
pub(super) fn tag(value: Value, origin: &str) -> Value {
    let origin = origin.to_string();
    let kind = match value.kind {
        ValueKind::Table(map) => {
            ValueKind::Table(map.into_iter().map(|(k, v)| (k, tag(v, &origin))).collect())
        }
        ValueKind::Array(items) => {
            ValueKind::Array(items.into_iter().map(|v| tag(v, &origin)).collect())
        }
        other => other,
    };
    Value::new(Some(&origin), kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(kind: ValueKind) -> Value {
        Value::new(Some(&ORIGIN_FILE.to_string()), kind)
    }

    #[test]
    fn paths_quote_odd_keys() {
        assert_eq!(child_path("", "web"), "web");
        assert_eq!(child_path("profiles", "usr-meter"), "profiles.usr-meter");
        assert_eq!(child_path("profiles", "a.b"), "profiles.\"a.b\"");
        assert_eq!(index_path("listeners", 2), "listeners[2]");
    }

    #[test]
    fn typo_hints() {
        assert_eq!(closest("bnid", &["bind"]), Some("bind"));
        assert_eq!(
            closest("pool_sise", &["url", "pool_size"]),
            Some("pool_size")
        );
        assert_eq!(closest("zzzzzz", &["url", "pool_size"]), None);
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    #[test]
    fn conversions_accept_strings_for_numbers_and_bools() {
        let env = EnvVars::default();
        let mut ctx = Ctx::new("t.toml", &env);
        assert_eq!(
            int_in(0, 10)(&mut ctx, "a", &v(ValueKind::String(" 7 ".into()))),
            Some(7)
        );
        assert_eq!(
            float(&mut ctx, "a", &v(ValueKind::String("2.5".into()))),
            Some(2.5)
        );
        assert_eq!(
            boolean(&mut ctx, "a", &v(ValueKind::String("TRUE".into()))),
            Some(true)
        );
        assert_eq!(
            uint::<u8>(1, 247)(&mut ctx, "a", &v(ValueKind::I64(247))),
            Some(247)
        );
        assert!(ctx.errors.is_empty());
        assert_eq!(
            uint::<u8>(1, 247)(&mut ctx, "a", &v(ValueKind::I64(248))),
            None
        );
        assert_eq!(
            float(&mut ctx, "b", &v(ValueKind::String("nan".into()))),
            None
        );
        assert_eq!(boolean(&mut ctx, "c", &v(ValueKind::I64(1))), None);
        assert_eq!(
            hex_bytes(&mut ctx, "d", &v(ValueKind::String("0g".into()))),
            None
        );
        assert_eq!(ctx.errors.len(), 4);
        assert_eq!(ctx.errors[0].key, "a");
        assert_eq!(ctx.errors[0].file, "t.toml");
    }

    #[test]
    fn hex_allows_spaces() {
        let env = EnvVars::default();
        let mut ctx = Ctx::new("t.toml", &env);
        let got = hex_bytes(&mut ctx, "h", &v(ValueKind::String("01 03 0a\tFF".into())));
        assert_eq!(got, Some(vec![1, 3, 10, 255]));
        let got = hex_bytes(&mut ctx, "h", &v(ValueKind::String(String::new())));
        assert_eq!(got, Some(vec![]));
        assert_eq!(
            hex_bytes(&mut ctx, "h", &v(ValueKind::String("ABC".into()))),
            None
        );
    }

    #[test]
    fn env_strings_keep_their_text() {
        let mut env = EnvVars::default();
        env.by_path.insert(
            "auth.admin_token".into(),
            ("DTU__AUTH__ADMIN_TOKEN".into(), "007".into()),
        );
        let mut ctx = Ctx::new("server.toml", &env);
        let parsed = Value::new(Some(&ORIGIN_ENV.to_string()), ValueKind::I64(7));
        assert_eq!(
            string(&mut ctx, "auth.admin_token", &parsed),
            Some("007".into())
        );
        // The same number from the file is a type error.
        assert_eq!(
            string(&mut ctx, "auth.admin_token", &v(ValueKind::I64(7))),
            None
        );
        assert_eq!(ctx.errors.len(), 1);
        assert_eq!(ctx.errors[0].file, "server.toml");
        ctx.err("auth.admin_token", Some(&parsed), "x");
        assert_eq!(ctx.errors[1].file, "env DTU__AUTH__ADMIN_TOKEN");
    }
}
