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

/// Whether the tenant under `prefix` may go: none of its keys is left on `home`, and no
/// migration of it holds its lock there.
pub async fn is_gone(home: &Datastore, prefix: &[u8]) -> Result<bool, ProxyError> {
    let range = crate::keys::KeyRange::prefix(prefix);
    if ops::count_tenant(home, &range, &reserved_prefix(prefix), 0).await? > 0 {
        return Ok(false);
    }
    Ok(marker::read_value(home, &marker::lock_key(prefix)).await?.is_none())
}

/// Deletes what cutover keeps of the tenant under `prefix` from every datastore of `pool`:
/// its own keys everywhere, and on a datastore the tenant left (its "moved" marker there)
/// the old copy as well. A datastore that is `home` under another name keeps everything
/// but cutover's keys. Returns how many keys went.
pub async fn forget(pool: &BTreeMap<String, Arc<Datastore>>, home: &str, prefix: &[u8]) -> Result<i64, ProxyError> {
    let home_ds = pool
        .get(home)
        .ok_or_else(|| ProxyError::Catalog(format!("the tenant's home {home:?} is not in the pool")))?;
    let reserved = reserved_prefix(prefix);
    let guard = Guard::new(prefix);
    let mut deleted = 0;
    for (name, ds) in pool {
        let left = name != home
            && !ops::same_cluster(ds, home_ds, &reserved).await?
            && matches!(marker::read(ds, &guard).await?, Some(Marker::Moved { .. }));
        let (start, end) = if left {
            (Bytes::copy_from_slice(prefix), prefix_end(prefix))
        } else {
            (reserved.clone(), prefix_end(&reserved))
        };
        deleted += ops::delete(ds, start, end).await?;
    }
    Ok(deleted)
}
