//! The node's APIs: client key/value (port 2379), Raft peers (2380), admin
//! (2381) and HTTP health and metrics. Each is a thin adapter over [`Host`](crate::host::Host).

pub mod admin;
pub mod http;
pub mod kv;
pub mod listener;
pub mod peer;
