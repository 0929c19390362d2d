//! Which etcd the tests run against: the binaries on PATH and the server they start
//! must be the release asked for (CUTOVER_ETCD_VERSION), so that a tier's log cannot
//! claim one version while another one ran.

use crate::support::{client, etcd_version, etcdctl_version, wanted_etcd_version, Etcd};

/// "3.5.16" is of minor version "3.5"; "3.50.1" is not.
fn is_of(version: &str, minor: &str) -> bool {
    version.strip_prefix(minor).is_some_and(|rest| rest.starts_with('.'))
}

#[tokio::test]
async fn the_etcd_that_runs_is_the_version_asked_for() {
    let (etcd, etcdctl) = (etcd_version(), etcdctl_version());
    assert_eq!(etcd, etcdctl, "etcd and etcdctl on PATH come from different releases");
    match wanted_etcd_version() {
        Some(want) => assert!(is_of(etcd, &want), "asked for etcd {want}, PATH has etcd {etcd}"),
        None => assert!(
            is_of(etcd, "3.4") || is_of(etcd, "3.5"),
            "etcd {etcd} on PATH: the tests know 3.4 and 3.5"
        ),
    }
    // The server started from that binary reports the same version.
    let member = Etcd::start().await;
    let status = client(&member.endpoint)
        .await
        .status()
        .await
        .expect("maintenance status");
    assert_eq!(status.version(), etcd, "the running etcd's version");
}

#[test]
fn a_version_is_of_its_minor_release_only() {
    assert!(is_of("3.5.16", "3.5"));
    assert!(is_of("3.4.23", "3.4"));
    assert!(!is_of("3.4.23", "3.5"));
    assert!(!is_of("3.50.1", "3.5"));
}
