//! One connection = one actor: the lifecycle every device connection shares, and a driver per
//! kind of protocol (request/response polling, `$TTMS` relaying).

pub mod device;
pub mod link;
pub mod relay;
