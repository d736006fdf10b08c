//! Database URLs: which backend a URL names, where it points, and its password, which no
//! message may repeat (`redact`, `scrub`).

use std::time::Duration;

use super::error::StorageError;

/// How long a TCP connect to a database server may take before `connect` gives up.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The database product a URL names.
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

#[cfg(not(feature = "mysql"))]
const MYSQL_FEATURE_HELP: &str = "this binary was built without MariaDB/MySQL support: \
     rebuild with `cargo build --release --features mysql` \
     (needs the client library: `apt-get install default-libmysqlclient-dev`)";

/// A URL, parsed.
pub(super) struct DbUrl {
    pub(super) target: Target,
    /// The password, to scrub out of driver messages.
    pub(super) secret: Option<String>,
    /// The URL with its password masked, for messages.
    pub(super) shown: String,
}

/// Where a URL points.
#[derive(Clone)]
pub(super) enum Target {
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
    pub(super) fn backend(&self) -> Backend {
        match self {
            Target::Sqlite(_) => Backend::Sqlite,
            Target::Postgres(_) => Backend::Postgres,
            #[cfg(feature = "mysql")]
            Target::Mysql { .. } => Backend::Mysql,
        }
    }
}

/// Parses a database URL; the error never repeats the password.
pub(super) fn parse_url(url: &str) -> Result<DbUrl, StorageError> {
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
    Ok(DbUrl {
        target,
        secret,
        shown,
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
pub(super) fn scrub(msg: String, secret: Option<&str>) -> String {
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
