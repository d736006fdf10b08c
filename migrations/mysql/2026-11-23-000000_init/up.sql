-- dtu-supervisor storage, MariaDB/MySQL. Times are UTC in DATETIME(6) (microseconds, no time
-- zone conversion), flags SMALLINT 0/1, bytes uppercase hex text. utf8mb4_bin so that ids compare
-- byte for byte as on the other backends. Keep the columns in step with the sqlite and postgres
-- migrations of the same name and with src/storage/schema.rs.

CREATE TABLE devices (
    id VARCHAR(64) NOT NULL PRIMARY KEY,
    protocol VARCHAR(32) NOT NULL,
    profile VARCHAR(128),
    remote_addr VARCHAR(128) NOT NULL,
    online SMALLINT NOT NULL DEFAULT 0,
    connected_at DATETIME(6) NOT NULL,
    last_seen DATETIME(6) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE connection_events (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    device_id VARCHAR(64) NOT NULL,
    event VARCHAR(32) NOT NULL,
    remote_addr VARCHAR(128) NOT NULL,
    detail TEXT NOT NULL,
    at DATETIME(6) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX connection_events_device_at ON connection_events (device_id, at);
CREATE INDEX connection_events_at ON connection_events (at);

CREATE TABLE raw_packets (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    device_id VARCHAR(64) NOT NULL,
    direction VARCHAR(8) NOT NULL,
    kind VARCHAR(16) NOT NULL,
    hex MEDIUMTEXT NOT NULL,
    at DATETIME(6) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX raw_packets_device_at ON raw_packets (device_id, at);
CREATE INDEX raw_packets_at ON raw_packets (at);

CREATE TABLE telemetry (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    device_id VARCHAR(64) NOT NULL,
    point VARCHAR(128) NOT NULL,
    value DOUBLE NOT NULL,
    raw DOUBLE NOT NULL,
    at DATETIME(6) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX telemetry_device_point_at ON telemetry (device_id, point, at);
CREATE INDEX telemetry_device_at ON telemetry (device_id, at);
CREATE INDEX telemetry_at ON telemetry (at);

CREATE TABLE commands (
    id VARCHAR(40) NOT NULL PRIMARY KEY,
    device_id VARCHAR(64) NOT NULL,
    request TEXT NOT NULL,
    status VARCHAR(16) NOT NULL,
    result TEXT,
    error TEXT,
    requested_by VARCHAR(64),
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX commands_device_created ON commands (device_id, created_at);
