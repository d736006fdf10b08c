DROP TABLE commands;
DROP TABLE telemetry;
DROP TABLE raw_packets;
DROP TABLE connection_events;
DROP TABLE devices;
