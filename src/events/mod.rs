//! Events: the bus every event goes through, the threshold rules that raise some of them, and
//! the webhook senders that deliver them.

pub mod bus;
pub mod rules;
pub mod webhooks;
