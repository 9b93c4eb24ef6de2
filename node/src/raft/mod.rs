//! openraft wiring: the type configuration, the peer client every group
//! sends through, and a group's lifecycle on this node.

pub mod group;
pub mod network;
pub mod types;
