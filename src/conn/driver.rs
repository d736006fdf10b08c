//! What a kind of connection adds to the lifecycle every connection shares
//! ([`crate::conn::lifecycle`]): how its bytes decode, what it does with each item, what the
//! supervisor may ask of it, and what it ends with.
//!
//! A driver is needed per kind of *behaviour*, not per wire protocol: every request/response
//! protocol (framed, transparent, and those to come) is driven by [`crate::conn::device`]
//! through its `LinkCodec`; `$TTMS` relaying is [`crate::conn::relay`].

use actix::Context;
use bytes::BytesMut;

use crate::conn::lifecycle::Connection;
use crate::protocol::link::CodecError;
use crate::supervisor::messages::Service;

pub trait Driver: Sized + Unpin + 'static {
    /// What the driver's codec yields.
    type Item;

    /// How log lines name a connection of this kind before it has registered.
    const UNREGISTERED: &'static str;

    /// The next item at the start of `buf`, consuming its bytes; `Ok(None)` until one is
    /// complete; `Err` closes the connection.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, CodecError>;

    /// One item arrived. Registration is the driver's to recognise: it calls
    /// [`Connection::register`].
    fn on_item(conn: &mut Connection<Self>, item: Self::Item, ctx: &mut Context<Connection<Self>>);

    /// The connection has registered and the supervisor has been told; start what runs while
    /// it is online.
    fn on_registered(conn: &mut Connection<Self>, ctx: &mut Context<Connection<Self>>);

    /// What the supervisor can ask of this connection besides closing it.
    fn service(ctx: &mut Context<Connection<Self>>) -> Service;

    /// The connection has stopped: end or hand back whatever is still pending.
    fn on_stopped(conn: &mut Connection<Self>);

    /// How many messages may wait in the connection's mailbox.
    fn mailbox_capacity() -> usize;
}
