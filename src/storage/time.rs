//! Times in the database: stored as naive UTC, truncated to microseconds (the finest that
//! every backend keeps), read back as `DateTime<Utc>`, and compared through [`bound`]. Telemetry
//! times are integer milliseconds instead ([`millis`]).

use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};
use diesel::dsl::{sql, AsExprOf};
use diesel::expression::{SqlLiteral, UncheckedBind};
use diesel::sql_types::Timestamp;

use super::db::Backend;

/// A time as it is stored.
pub(super) fn naive(t: DateTime<Utc>) -> NaiveDateTime {
    t.trunc_subsecs(6).naive_utc()
}

/// A stored time as the rest of the server sees it.
pub(super) fn utc(t: NaiveDateTime) -> DateTime<Utc> {
    t.and_utc()
}

/// A time parameter that a `Timestamp` column is compared with.
pub(super) type Bound =
    SqlLiteral<Timestamp, UncheckedBind<SqlLiteral<Timestamp>, AsExprOf<NaiveDateTime, Timestamp>>>;

/// A time to compare a `Timestamp` column with.
///
/// diesel binds a timestamp to MySQL as `MYSQL_TYPE_TIMESTAMP`, and MariaDB's range optimizer
/// then treats it as a TIMESTAMP (1970–2038) when it meets an index on a DATETIME column:
/// `at >= '1960-…'` or `at < '2999-…'` silently matches nothing. Casting the parameter to
/// DATETIME(6) keeps the comparison exact and the index in use. (Inserts have the same problem
/// and a different cure: see `mysql.rs`.)
pub(super) fn bound(backend: Backend, t: NaiveDateTime) -> Bound {
    let (open, close) = match backend {
        Backend::Mysql => ("CAST(", " AS DATETIME(6))"),
        Backend::Sqlite | Backend::Postgres => ("", ""),
    };
    sql::<Timestamp>(open).bind::<Timestamp, _>(t).sql(close)
}

/// A telemetry time as it is stored: milliseconds since 1970-01-01 UTC, rounded down. Bounds
/// compared with stored times are taken to the millisecond the same way, so that a row and a
/// bound of the same instant compare as they did before rounding.
pub(super) fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// A stored telemetry time as the rest of the server sees it. Every stored value comes from
/// [`millis`]; one out of chrono's range (written by something else) reads as the nearest end
/// of the range.
pub(super) fn from_millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(if ms < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}
