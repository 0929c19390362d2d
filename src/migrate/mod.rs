//! The live migration: it drives `route` and never handles client traffic.
//! This session provides the Copying phase; the state machine around it follows.

pub mod catchup;
pub mod copy;
pub mod record;
