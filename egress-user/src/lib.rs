//! The `egress` binary's library: everything but argument parsing lives here.
pub mod config;
pub mod identity;
pub mod model;
