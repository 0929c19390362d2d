//! What is left of a tenant Kamaji deleted. Kamaji deletes a tenant's role, its keys (a
//! prefix delete through the gateway) and its user; cutover's own keys under the prefix
//! (`/<schema>/\0cutover/...`: the translation record, the migration markers) are no
//! client's to delete, and a datastore the tenant left may still hold its old copy. Once the
//! role is gone and the datastore the tenant lives on holds none of its keys, the tenant
//! moves in the catalog to the leftovers, and its keys there go on every datastore (tried
//! again until they are gone); only then can a tenant of the same name be placed, afresh,
//! with no marker sending it where the old one went.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::ProxyError;
use crate::keys::{prefix_end, reserved_prefix};
use crate::migrate::marker::{self, Marker};
use crate::migrate::ops;
use crate::route::fence::Guard;
use crate::upstream::Datastore;

/// Whether the tenant under `prefix`, living on `home` (as its markers lead), may go:
/// none of its keys is left there, no migration of it holds its lock there, and it has
/// not moved away since its markers were followed (a "moved" marker there now).
pub async fn is_gone(home: &Datastore, prefix: &[u8]) -> Result<bool, ProxyError> {
    let range = crate::keys::KeyRange::prefix(prefix);
    if marker::read_value(home, &marker::lock_key(prefix)).await?.is_some() {
        return Ok(false);
    }
    if matches!(
        marker::read(home, &Guard::new(prefix)).await?,
        Some(Marker::Moved { .. })
    ) {
        return Ok(false);
    }
    Ok(ops::count_tenant(home, &range, &reserved_prefix(prefix), 0).await? == 0)
}

/// Deletes what cutover keeps of the tenant under `prefix`, which lived last on `home`,
/// from every datastore of `pool`: its own keys everywhere, and the old copy on a datastore
/// it left (its "moved" marker there, still the same when the copy is deleted; never
/// `home`, nor `home` under another name). A `home` no longer in the pool is passed over.
/// Returns how many keys went.
pub async fn forget(pool: &BTreeMap<String, Arc<Datastore>>, home: &str, prefix: &[u8]) -> Result<i64, ProxyError> {
    let home_ds = pool.get(home);
    let reserved = reserved_prefix(prefix);
    let guard = Guard::new(prefix);
    let mut deleted = 0;
    for (name, ds) in pool {
        let is_home = match home_ds {
            Some(h) => name == home || ops::same_cluster(ds, h, &reserved).await?,
            None => false,
        };
        let marker = if is_home {
            None
        } else {
            marker::read_value(ds, guard.fence_key())
                .await?
                .filter(|raw| matches!(Marker::parse(raw), Some(Marker::Moved { .. })))
        };
        deleted += match marker {
            // The old copy, and the marker with it, if the marker is still the one read
            // (another replica may have cleared it, and a new tenant placed there since).
            Some(raw) => delete_if_marker(ds, prefix, guard.fence_key(), raw).await?,
            None => ops::delete(ds, reserved.clone(), prefix_end(&reserved)).await?,
        };
    }
    Ok(deleted)
}

/// Deletes the whole prefix on `ds` in one Txn, if its fence key still holds `raw`.
async fn delete_if_marker(ds: &Datastore, prefix: &[u8], fence_key: &Bytes, raw: Bytes) -> Result<i64, ProxyError> {
    use crate::proto::etcdserverpb::{request_op, response_op, DeleteRangeRequest, RequestOp, TxnRequest};
    let txn = TxnRequest {
        compare: vec![ops::value_is(fence_key, raw)],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: Bytes::copy_from_slice(prefix),
                range_end: prefix_end(prefix),
                ..Default::default()
            })),
        }],
        failure: vec![],
    };
    let resp = ops::txn(ds, txn).await?;
    Ok(resp
        .responses
        .first()
        .and_then(|r| match &r.response {
            Some(response_op::Response::ResponseDeleteRange(d)) => Some(d.deleted),
            _ => None,
        })
        .unwrap_or(0))
}
