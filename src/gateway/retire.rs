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
/// none of its keys is left there, and no migration of it holds its lock there.
pub async fn is_gone(home: &Datastore, prefix: &[u8]) -> Result<bool, ProxyError> {
    let range = crate::keys::KeyRange::prefix(prefix);
    if marker::read_value(home, &marker::lock_key(prefix)).await?.is_some() {
        return Ok(false);
    }
    Ok(ops::count_tenant(home, &range, &reserved_prefix(prefix), 0).await? == 0)
}

/// Deletes what cutover keeps of the tenant under `prefix`, which lived last on `home`,
/// from every datastore of `pool`: its own keys everywhere, and the old copy on a datastore
/// it left (its "moved" marker there; never `home`, nor `home` under another name). Returns
/// how many keys went.
pub async fn forget(pool: &BTreeMap<String, Arc<Datastore>>, home: &str, prefix: &[u8]) -> Result<i64, ProxyError> {
    let home_ds = pool
        .get(home)
        .ok_or_else(|| ProxyError::Catalog(format!("the tenant's last home {home:?} is not in the pool")))?;
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
