//! The ferrocat runtime behind the `ferrocat` binary.
//!
//! * [`cli`]: the command line (`all-in-one`, `balancer`, `app`, `check-config`).
//! * [`config`]: TOML file + `FERROCAT__SECTION__KEY` overrides, validated.
//! * [`app`]: an app node (demo app + session manager + backend).
//! * [`runtime`]: runs a mode in an actix `System`, handles signals.
//!
//! `ferrocat all-in-one` starts the app node on its own loopback port and the
//! balancer in front of it (plus any upstreams in the config); `ferrocat app`
//! and `ferrocat balancer` run one half each, as in a cluster.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod cli;
pub mod config;
pub mod memcached;
pub mod runtime;
