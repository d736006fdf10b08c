//! The `$TTMS` terminal relay: one actor per terminal connection, frames routed between
//! terminals through the supervisor, and store-and-forward in `relay_queue` for offline targets.

pub mod actor;
