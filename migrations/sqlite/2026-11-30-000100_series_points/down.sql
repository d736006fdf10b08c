DROP VIEW telemetry;
CREATE TABLE telemetry (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    device_id VARCHAR(64) NOT NULL,
    point VARCHAR(128) NOT NULL,
    value DOUBLE NOT NULL,
    raw DOUBLE NOT NULL,
    at TIMESTAMP NOT NULL
);
INSERT INTO telemetry (device_id, point, value, raw, at)
    SELECT s.device_id, s.point, p.value, p.raw,
           strftime('%Y-%m-%d %H:%M:%f', p.at / 1000.0, 'unixepoch')
    FROM points p JOIN series s ON s.id = p.series_id
    ORDER BY p.at, p.series_id;
CREATE INDEX telemetry_device_point_at ON telemetry (device_id, point, at);
CREATE INDEX telemetry_device_at ON telemetry (device_id, at);
CREATE INDEX telemetry_at ON telemetry (at);
DROP TABLE points;
DROP TABLE series;
