DROP VIEW telemetry;
CREATE TABLE telemetry (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    device_id VARCHAR(64) NOT NULL,
    point VARCHAR(128) NOT NULL,
    value DOUBLE NOT NULL,
    raw DOUBLE NOT NULL,
    at DATETIME(6) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
INSERT INTO telemetry (device_id, point, value, raw, at)
    SELECT s.device_id, s.point, p.value, p.raw,
           TIMESTAMPADD(MICROSECOND, p.at * 1000, CAST('1970-01-01 00:00:00' AS DATETIME(6)))
    FROM points p JOIN series s ON s.id = p.series_id
    ORDER BY p.at, p.series_id;
CREATE INDEX telemetry_device_point_at ON telemetry (device_id, point, at);
CREATE INDEX telemetry_device_at ON telemetry (device_id, at);
CREATE INDEX telemetry_at ON telemetry (at);
DROP TABLE points;
DROP TABLE series;
