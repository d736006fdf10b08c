DROP VIEW telemetry;
CREATE TABLE telemetry (
    id BIGSERIAL PRIMARY KEY,
    device_id VARCHAR(64) NOT NULL,
    point VARCHAR(128) NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    raw DOUBLE PRECISION NOT NULL,
    at TIMESTAMP NOT NULL
);
INSERT INTO telemetry (device_id, point, value, raw, at)
    SELECT s.device_id, s.point, p.value, p.raw,
           TIMESTAMP '1970-01-01 00:00:00' + p.at * INTERVAL '1 millisecond'
    FROM points p JOIN series s ON s.id = p.series_id
    ORDER BY p.at, p.series_id;
CREATE INDEX telemetry_device_point_at ON telemetry (device_id, point, at);
CREATE INDEX telemetry_device_at ON telemetry (device_id, at);
CREATE INDEX telemetry_at ON telemetry (at);
DROP TABLE points;
DROP TABLE series;
