-- The dense telemetry layout: a series per (device, point), and points keyed by series and
-- time in integer milliseconds since 1970-01-01 UTC. WITHOUT ROWID: the primary key is the
-- table (no rowid, no second index), so a point costs its key and two REAL values. A REAL with
-- an integer value (most raws) is stored by SQLite as a small integer and read back as REAL.
CREATE TABLE series (
    id INTEGER PRIMARY KEY NOT NULL,
    device_id VARCHAR(64) NOT NULL,
    point VARCHAR(128) NOT NULL,
    unit VARCHAR(32) NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX series_device_point ON series (device_id, point);

CREATE TABLE points (
    series_id INTEGER NOT NULL,
    at BIGINT NOT NULL,
    value DOUBLE NOT NULL,
    raw DOUBLE NOT NULL,
    PRIMARY KEY (series_id, at)
) WITHOUT ROWID;

-- The old rows: series numbered in the order they first appeared, times truncated to the
-- millisecond (stored as 'YYYY-MM-DD HH:MM:SS[.ffffff]'); of several rows of a series in one
-- millisecond the last written wins, as it does for new rows.
INSERT INTO series (device_id, point)
    SELECT device_id, point FROM telemetry GROUP BY device_id, point ORDER BY MIN(id);
INSERT OR REPLACE INTO points (series_id, at, value, raw)
    SELECT s.id,
           CAST(strftime('%s', substr(t.at, 1, 19)) AS INTEGER) * 1000
               + CAST(substr(t.at || '000000', 21, 3) AS INTEGER),
           t.value, t.raw
    FROM telemetry t JOIN series s ON s.device_id = t.device_id AND s.point = t.point
    ORDER BY t.id;
DROP TABLE telemetry;

-- The contract's shape of telemetry, for whoever reads the database directly.
CREATE VIEW telemetry AS
    SELECT s.device_id AS device_id, s.point AS point, p.value AS value, p.raw AS raw,
           strftime('%Y-%m-%d %H:%M:%f', p.at / 1000.0, 'unixepoch') AS at
    FROM points p JOIN series s ON s.id = p.series_id;
