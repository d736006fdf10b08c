-- The dense telemetry layout: a series per (device, point), and points keyed by series and
-- time in integer milliseconds since 1970-01-01 UTC (InnoDB clusters the table on its key).
CREATE TABLE series (
    id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    device_id VARCHAR(64) NOT NULL,
    point VARCHAR(128) NOT NULL,
    unit VARCHAR(32) NOT NULL DEFAULT '',
    UNIQUE KEY series_device_point (device_id, point)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE points (
    series_id INT NOT NULL,
    at BIGINT NOT NULL,
    value DOUBLE NOT NULL,
    raw DOUBLE NOT NULL,
    PRIMARY KEY (series_id, at)
) ENGINE=InnoDB;

-- The old rows: series numbered in the order they first appeared, times truncated to the
-- millisecond; of several rows of a series in one millisecond the last written wins, as it
-- does for new rows.
INSERT INTO series (device_id, point)
    SELECT device_id, point FROM telemetry GROUP BY device_id, point ORDER BY MIN(id);
INSERT INTO points (series_id, at, value, raw)
    SELECT s.id, FLOOR(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', t.at) / 1000),
           t.value, t.raw
    FROM telemetry t JOIN series s ON s.device_id = t.device_id AND s.point = t.point
    ORDER BY t.id
    ON DUPLICATE KEY UPDATE value = VALUES(value), raw = VALUES(raw);
DROP TABLE telemetry;

-- The contract's shape of telemetry, for whoever reads the database directly.
CREATE VIEW telemetry AS
    SELECT s.device_id, s.point, p.value, p.raw,
           TIMESTAMPADD(MICROSECOND, p.at * 1000, CAST('1970-01-01 00:00:00' AS DATETIME(6))) AS at
    FROM points p JOIN series s ON s.id = p.series_id;
