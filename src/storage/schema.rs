// @generated automatically by Diesel CLI, then edited: `telemetry` is a view over `series` and
// `points` (migration 2026-11-30-000100), which the server reads and writes directly.

diesel::table! {
    commands (id) {
        id -> Text,
        device_id -> Text,
        request -> Text,
        status -> Text,
        result -> Nullable<Text>,
        error -> Nullable<Text>,
        requested_by -> Nullable<Text>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        queue_seq -> Nullable<BigInt>,
        expires_at -> Nullable<Timestamp>,
        token_id -> Nullable<Text>,
    }
}

diesel::table! {
    connection_events (id) {
        id -> BigInt,
        device_id -> Text,
        event -> Text,
        remote_addr -> Text,
        detail -> Text,
        at -> Timestamp,
    }
}

diesel::table! {
    devices (id) {
        id -> Text,
        protocol -> Text,
        profile -> Nullable<Text>,
        remote_addr -> Text,
        online -> SmallInt,
        connected_at -> Timestamp,
        last_seen -> Timestamp,
        parent -> Nullable<Text>,
        unit -> Nullable<SmallInt>,
    }
}

diesel::table! {
    /// Telemetry values: one row per value, keyed by series and time (milliseconds since
    /// 1970-01-01 UTC). Read as the contract's `telemetry` shape through the view of that name.
    points (series_id, at) {
        series_id -> Integer,
        at -> BigInt,
        value -> Double,
        raw -> Double,
    }
}

diesel::table! {
    raw_packets (id) {
        id -> BigInt,
        device_id -> Text,
        direction -> Text,
        kind -> Text,
        hex -> Text,
        at -> Timestamp,
    }
}

diesel::table! {
    relay_queue (id) {
        id -> BigInt,
        target -> Text,
        sender -> Text,
        hex -> Text,
        queued_at -> Timestamp,
        delivered_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    /// One device's point: what `points` are stored under.
    series (id) {
        id -> Integer,
        device_id -> Text,
        point -> Text,
        unit -> Text,
    }
}

diesel::table! {
    tokens (id) {
        id -> Text,
        name -> Text,
        role -> Text,
        hash -> Text,
        devices -> Nullable<Text>,
        created_at -> Timestamp,
        revoked -> SmallInt,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> BigInt,
        webhook_id -> Text,
        delivery -> Text,
        event -> Text,
        events -> Integer,
        attempt -> Integer,
        outcome -> Text,
        status_code -> Nullable<Integer>,
        error -> Nullable<Text>,
        latency_ms -> BigInt,
        at -> Timestamp,
    }
}

diesel::table! {
    webhooks (id) {
        id -> Text,
        url -> Text,
        events -> Text,
        secret -> Nullable<Text>,
        devices -> Nullable<Text>,
        created_at -> Timestamp,
    }
}

diesel::joinable!(points -> series (series_id));

diesel::allow_tables_to_appear_in_same_query!(
    commands,
    connection_events,
    devices,
    points,
    raw_packets,
    relay_queue,
    series,
    tokens,
    webhook_deliveries,
    webhooks,
);
