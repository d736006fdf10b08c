-- dtu-supervisor storage, SQLite. Times are UTC TIMESTAMP text ("YYYY-MM-DD HH:MM:SS.ffffff"),
-- flags SMALLINT 0/1, bytes uppercase hex TEXT. Keep the columns in step with the postgres and
-- mysql migrations of the same name and with src/storage/schema.rs.

CREATE TABLE devices (
    id VARCHAR(64) NOT NULL PRIMARY KEY,
    protocol VARCHAR(32) NOT NULL,
    profile VARCHAR(128),
    remote_addr VARCHAR(128) NOT NULL,
    online SMALLINT NOT NULL DEFAULT 0,
    connected_at TIMESTAMP NOT NULL,
    last_seen TIMESTAMP NOT NULL
);

CREATE TABLE connection_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    device_id VARCHAR(64) NOT NULL,
    event VARCHAR(32) NOT NULL,
    remote_addr VARCHAR(128) NOT NULL,
    detail TEXT NOT NULL,
    at TIMESTAMP NOT NULL
);
CREATE INDEX connection_events_device_at ON connection_events (device_id, at);
CREATE INDEX connection_events_at ON connection_events (at);

CREATE TABLE raw_packets (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    device_id VARCHAR(64) NOT NULL,
    direction VARCHAR(8) NOT NULL,
    kind VARCHAR(16) NOT NULL,
    hex TEXT NOT NULL,
    at TIMESTAMP NOT NULL
);
CREATE INDEX raw_packets_device_at ON raw_packets (device_id, at);
CREATE INDEX raw_packets_at ON raw_packets (at);

CREATE TABLE telemetry (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    device_id VARCHAR(64) NOT NULL,
    point VARCHAR(128) NOT NULL,
    value DOUBLE NOT NULL,
    raw DOUBLE NOT NULL,
    at TIMESTAMP NOT NULL
);
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
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX commands_device_created ON commands (device_id, created_at);
