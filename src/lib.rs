//! cutover: an etcd v3 gRPC proxy that runs as a sidecar next to kube-apiserver.
//!
//! The data path follows the module tree: a request enters [`server`], asks [`route`]
//! where to go, and is sent by [`upstream`]; [`admin`] serves health, metrics and status.

pub mod admin;
pub mod app;
pub mod backoff;
pub mod cli;
pub mod coalesce;
pub mod codec;
pub mod config;
pub mod error;
pub mod failpoint;
pub mod gateway;
pub mod keys;
pub mod memory;
pub mod metrics;
pub mod migrate;
pub mod proto;
pub mod rbac;
pub mod reload;
pub mod route;
pub mod server;
pub mod tasks;
pub mod upstream;
