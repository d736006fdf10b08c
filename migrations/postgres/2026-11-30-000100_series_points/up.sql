-- The dense telemetry layout: a series per (device, point), and points keyed by series and
-- time in integer milliseconds since 1970-01-01 UTC.
CREATE TABLE series (
    id SERIAL PRIMARY KEY,
    device_id VARCHAR(64) NOT NULL,
    point VARCHAR(128) NOT NULL,
    unit VARCHAR(32) NOT NULL DEFAULT '',
    UNIQUE (device_id, point)
);

CREATE TABLE points (
    series_id INTEGER NOT NULL,
    at BIGINT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    raw DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (series_id, at)
);

-- The old rows: series numbered in the order they first appeared, times truncated to the
-- millisecond; of several rows of a series in one millisecond the last written wins, as it
-- does for new rows.
INSERT INTO series (device_id, point)
    SELECT device_id, point FROM telemetry GROUP BY device_id, point ORDER BY MIN(id);
INSERT INTO points (series_id, at, value, raw)
    SELECT DISTINCT ON (s.id, 2) s.id, floor(extract(epoch FROM t.at) * 1000)::BIGINT,
           t.value, t.raw
    FROM telemetry t JOIN series s ON s.device_id = t.device_id AND s.point = t.point
    ORDER BY s.id, 2, t.id DESC;
DROP TABLE telemetry;

-- The contract's shape of telemetry, for whoever reads the database directly.
CREATE VIEW telemetry AS
    SELECT s.device_id, s.point, p.value, p.raw,
           TIMESTAMP '1970-01-01 00:00:00' + p.at * INTERVAL '1 millisecond' AS at
    FROM points p JOIN series s ON s.id = p.series_id;
