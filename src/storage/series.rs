//! Series: the integer id of each (device, point), which points are stored under.
//!
//! A series is created the first time a point of a device is written: insert-or-ignore, then
//! select (so that two writers, or a spool replayed after a restart, agree on one id). Ids are
//! remembered in a [`SeriesCache`] that every clone of a [`Db`](super::db::Db) shares, loaded
//! a device at a time (one query for all of a device's series). What a write learns is kept
//! only once its transaction has committed ([`Resolver::commit`]): a rolled-back write must
//! not leave the cache holding an id the database never kept.
//!
//! A series also records the point's unit, the last one written with it (rows without one,
//! such as those spooled by an earlier release, leave it as it is). Series are never deleted:
//! retention removes points only, and the cache stays valid for the life of the process.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use diesel::prelude::*;

use super::db::{on_inner, AnyConnection};
use super::insert::NewSeries;
#[cfg(feature = "mysql")]
use super::mysql;
use super::schema::series;

/// A series as the cache knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Known {
    id: i32,
    unit: String,
}

/// Series by device, then by point.
#[derive(Debug, Default)]
pub(crate) struct SeriesCache {
    devices: Mutex<HashMap<String, HashMap<String, Known>>>,
}

impl SeriesCache {
    /// Resolves series for one write; holds the cache until it is dropped or committed.
    pub(crate) fn resolver(&self) -> Resolver<'_> {
        Resolver {
            cache: self.devices.lock().unwrap_or_else(PoisonError::into_inner),
            learned: HashMap::new(),
        }
    }

    /// Series known for `device`, for tests.
    #[cfg(test)]
    fn known(&self, device: &str) -> usize {
        self.devices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(device)
            .map_or(0, HashMap::len)
    }
}

/// The series of one write. Lookups see the cache and what this write learned; the latter
/// joins the cache on [`Resolver::commit`].
pub(crate) struct Resolver<'a> {
    cache: MutexGuard<'a, HashMap<String, HashMap<String, Known>>>,
    learned: HashMap<String, HashMap<String, Known>>,
}

impl Resolver<'_> {
    fn get(&self, device: &str, point: &str) -> Option<&Known> {
        self.learned
            .get(device)
            .and_then(|points| points.get(point))
            .or_else(|| self.cache.get(device).and_then(|points| points.get(point)))
    }

    /// The id of the series of `device`/`point`, created if needed; its unit updated when
    /// `unit` is not empty and differs. Runs inside the write's transaction.
    pub(crate) fn id(
        &mut self,
        conn: &mut AnyConnection,
        device: &str,
        point: &str,
        unit: &str,
    ) -> QueryResult<i32> {
        if let Some(known) = self.get(device, point) {
            if unit.is_empty() || known.unit == unit {
                return Ok(known.id);
            }
            let id = known.id;
            diesel::update(series::table.find(id))
                .set(series::unit.eq(unit))
                .execute(conn)?;
            self.learn(device, point, id, unit);
            return Ok(id);
        }
        if !self.cache.contains_key(device) && !self.learned.contains_key(device) {
            // First time this device is written since start: its series in one query.
            for (id, p, u) in series_of(conn, device)? {
                self.learn(device, &p, id, &u);
            }
            self.learned.entry(device.to_string()).or_default();
            if self.get(device, point).is_some() {
                return self.id(conn, device, point, unit);
            }
        }
        let new = NewSeries {
            device_id: device,
            point,
            unit,
        };
        on_inner!(conn,
            c => diesel::insert_into(series::table)
                .values(&new)
                .on_conflict_do_nothing()
                .execute(c),
            mysql c => mysql::insert_series(c, &new))?;
        let (id, stored_unit): (i32, String) = series::table
            .filter(series::device_id.eq(device))
            .filter(series::point.eq(point))
            .select((series::id, series::unit))
            .first(conn)?;
        self.learn(device, point, id, &stored_unit);
        if !unit.is_empty() && stored_unit != unit {
            // Another writer created it first, with another unit.
            return self.id(conn, device, point, unit);
        }
        Ok(id)
    }

    fn learn(&mut self, device: &str, point: &str, id: i32, unit: &str) {
        self.learned.entry(device.to_string()).or_default().insert(
            point.to_string(),
            Known {
                id,
                unit: unit.to_string(),
            },
        );
    }

    /// The write committed: what it learned joins the cache.
    pub(crate) fn commit(mut self) {
        for (device, points) in std::mem::take(&mut self.learned) {
            self.cache.entry(device).or_default().extend(points);
        }
    }
}

/// Every series of `device`: id, point, unit.
fn series_of(conn: &mut AnyConnection, device: &str) -> QueryResult<Vec<(i32, String, String)>> {
    series::table
        .filter(series::device_id.eq(device))
        .select((series::id, series::point, series::unit))
        .load(conn)
}

/// The ids of `device`'s series, with their points (for queries by device).
pub(crate) fn device_series(
    conn: &mut AnyConnection,
    device: &str,
    point: Option<&str>,
) -> QueryResult<Vec<(i32, String)>> {
    let mut query = series::table
        .filter(series::device_id.eq(device))
        .select((series::id, series::point))
        .order(series::id)
        .into_boxed();
    if let Some(p) = point {
        query = query.filter(series::point.eq(p));
    }
    query.load(conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::db::Db;

    fn db() -> Db {
        Db::connect("sqlite::memory:", 1).expect("in-memory database")
    }

    #[test]
    fn a_series_is_created_once_and_found_again() {
        let db = db();
        let mut conn = db.conn().expect("connection");
        let cache = SeriesCache::default();
        let mut r = cache.resolver();
        let a = r.id(&mut conn, "d1", "temp", "°C").expect("create");
        let b = r.id(&mut conn, "d1", "hum", "%").expect("create");
        assert_ne!(a, b);
        assert_eq!(r.id(&mut conn, "d1", "temp", "").expect("again"), a);
        r.commit();
        assert_eq!(cache.known("d1"), 2);
        // A fresh cache (a restart) finds the same ids in the database.
        let fresh = SeriesCache::default();
        let mut r = fresh.resolver();
        assert_eq!(r.id(&mut conn, "d1", "hum", "%").expect("load"), b);
        assert_eq!(r.id(&mut conn, "d1", "temp", "°C").expect("load"), a);
        r.commit();
        assert_eq!(fresh.known("d1"), 2);
    }

    #[test]
    fn what_a_rolled_back_write_learned_is_forgotten() {
        let db = db();
        let mut conn = db.conn().expect("connection");
        let cache = SeriesCache::default();
        let result: QueryResult<()> = conn.transaction(|c| {
            let mut r = cache.resolver();
            r.id(c, "d1", "temp", "")?;
            drop(r);
            Err(diesel::result::Error::RollbackTransaction)
        });
        assert!(result.is_err());
        assert_eq!(cache.known("d1"), 0);
        let mut r = cache.resolver();
        let id = r.id(&mut conn, "d1", "temp", "").expect("create");
        r.commit();
        let stored: Vec<(i32, String)> = device_series(&mut conn, "d1", None).expect("series");
        assert_eq!(stored, vec![(id, "temp".to_string())]);
    }

    #[test]
    fn a_new_unit_replaces_the_stored_one_and_an_empty_one_does_not() {
        let db = db();
        let mut conn = db.conn().expect("connection");
        let cache = SeriesCache::default();
        let unit_of = |conn: &mut AnyConnection| -> String {
            series::table
                .select(series::unit)
                .first(conn)
                .expect("unit")
        };
        let mut r = cache.resolver();
        let id = r.id(&mut conn, "d1", "temp", "°F").expect("create");
        assert_eq!(r.id(&mut conn, "d1", "temp", "°C").expect("unit"), id);
        assert_eq!(r.id(&mut conn, "d1", "temp", "").expect("no unit"), id);
        r.commit();
        assert_eq!(unit_of(&mut conn), "°C");
    }
}
