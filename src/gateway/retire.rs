//! What is left of a tenant Kamaji deleted. Kamaji deletes a tenant's role, its keys (a
//! prefix delete through the gateway) and its user; cutover's own keys under the prefix
//! (`/<schema>/\0cutover/...`: the translation record, the migration markers) are no
//! client's to delete, and a datastore the tenant left may still hold its old copy. Once the
//! role is gone and the tenant's home holds none of its keys, they go too, and the tenant
//! leaves the catalog: a tenant created later under the same name starts afresh, with no
//! marker sending it where the old one went.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::ProxyError;
use crate::keys::{prefix_end, reserved_prefix};
use crate::migrate::marker::{self, Marker};
use crate::migrate::ops;
use crate::route::fence::Guard;
use crate::upstream::Datastore;

/// Whether the tenant under `prefix` may go: no datastore of `pool` where it may live
/// (any without its "moved" marker: a store it left keeps only an old copy) holds a key of
/// it, and no migration of it holds its lock. Asked of every datastore, not of the home the
/// catalog records, which a move may have changed since.
pub async fn is_gone(pool: &BTreeMap<String, Arc<Datastore>>, prefix: &[u8]) -> Result<bool, ProxyError> {
    let range = crate::keys::KeyRange::prefix(prefix);
    let reserved = reserved_prefix(prefix);
    let guard = Guard::new(prefix);
    for ds in pool.values() {
        if marker::read_value(ds, &marker::lock_key(prefix)).await?.is_some() {
            return Ok(false);
        }
        if left(ds, &guard).await? {
            continue;
        }
        if ops::count_tenant(ds, &range, &reserved, 0).await? > 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether the tenant has left `ds` (its "moved" marker there).
async fn left(ds: &Datastore, guard: &Guard) -> Result<bool, ProxyError> {
    Ok(matches!(marker::read(ds, guard).await?, Some(Marker::Moved { .. })))
}

/// Deletes what cutover keeps of the tenant under `prefix` from every datastore of `pool`:
/// its own keys everywhere, and on a datastore the tenant left (its "moved" marker there)
/// the old copy as well. Returns how many keys went.
pub async fn forget(pool: &BTreeMap<String, Arc<Datastore>>, prefix: &[u8]) -> Result<i64, ProxyError> {
    let reserved = reserved_prefix(prefix);
    let guard = Guard::new(prefix);
    let mut deleted = 0;
    for ds in pool.values() {
        let (start, end) = if left(ds, &guard).await? {
            (Bytes::copy_from_slice(prefix), prefix_end(prefix))
        } else {
            (reserved.clone(), prefix_end(&reserved))
        };
        deleted += ops::delete(ds, start, end).await?;
    }
    Ok(deleted)
}
