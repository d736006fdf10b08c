//! Pure byte-level code: how DTUs frame what they send on their TCP link, Modbus, and how
//! register values become points. Nothing here knows actix, settings or sockets, so every
//! function can be tested, fuzzed and reused (the simulator speaks the device side of the
//! same codecs).

pub mod framed;
pub mod hex;
pub mod link;
pub mod modbus;
pub mod points;
pub mod transparent;
pub mod ttms;
