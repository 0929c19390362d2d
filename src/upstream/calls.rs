//! Calls cutover makes on a datastore with its own credentials, shared by the data path
//! (a lease revoked on both stores during a migration) and the migrator.

use crate::error::ProxyError;
use crate::proto::etcdserverpb::lease_client::LeaseClient;
use crate::proto::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest};

use super::{client, own_request, Datastore, Retry};

/// Grants a lease with a datastore-chosen ID.
pub async fn grant(ds: &Datastore, ttl: i64) -> Result<i64, ProxyError> {
    ds.unary(Retry::IfNotSent, |ch, token| {
        let r = own_request(LeaseGrantRequest { ttl, id: 0 }, token);
        async move { client!(LeaseClient, ch).lease_grant(r).await }
    })
    .await
    .map(|r| r.into_inner().id)
}

pub async fn revoke(ds: &Datastore, id: i64) -> Result<(), ProxyError> {
    ds.unary(Retry::IfNotSent, |ch, token| {
        let r = own_request(LeaseRevokeRequest { id }, token);
        async move { client!(LeaseClient, ch).lease_revoke(r).await }
    })
    .await
    .map(|_| ())
}
