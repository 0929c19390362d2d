//! Integration tests: real etcd members (3.4 or 3.5, whichever `etcd` is first on PATH)
//! on 127.0.0.1, the real cutover binary, and real clients (etcdctl, the `etcd-client`
//! crate). One test binary, one module per area.

#[path = "../common/mod.rs"]
mod common;
mod support;

mod admin;
mod bad_input;
mod client;
mod copy;
mod deploy;
mod errors;
mod etcd_version;
mod etcdctl;
mod failover;
mod faults;
mod fence;
mod gateway;
mod history;
mod keymap;
mod layers;
mod limits;
mod migrate;
mod rbac;
mod replicas;
mod soak;
mod tenancy;
mod tls;
