//! Calls cutover makes on a datastore with its own credentials, shared by the data path
//! (a lease revoked on both stores during a migration) and the migrator.

use crate::error::ProxyError;
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::lease_client::LeaseClient;
use crate::proto::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest, RangeRequest};

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

/// The value of one key (a linearizable read); `None` when it does not exist.
pub async fn value(ds: &Datastore, key: bytes::Bytes) -> Result<Option<bytes::Bytes>, ProxyError> {
    ds.unary(Retry::Idempotent, |ch, token| {
        let r = own_request(
            RangeRequest {
                key: key.clone(),
                ..Default::default()
            },
            token,
        );
        async move { client!(KvClient, ch).range(r).await }
    })
    .await
    .map(|r| r.into_inner().kvs.into_iter().next().map(|kv| kv.value))
}

/// How many keys the range `[key, range_end)` holds now (a count-only read).
pub async fn count(ds: &Datastore, key: bytes::Bytes, range_end: bytes::Bytes) -> Result<i64, ProxyError> {
    ds.unary(Retry::Idempotent, |ch, token| {
        let r = own_request(
            RangeRequest {
                key: key.clone(),
                range_end: range_end.clone(),
                count_only: true,
                ..Default::default()
            },
            token,
        );
        async move { client!(KvClient, ch).range(r).await }
    })
    .await
    .map(|r| r.into_inner().count)
}
