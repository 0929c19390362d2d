//! (Gateway) each request checked against what its caller may do with keys, as etcd checks
//! it. The gateway puts the caller's [`Permits`] on the request (its extensions) when the
//! caller is neither `root` nor served while auth is off; a sidecar puts none, and then
//! nothing here refuses anything.

use std::sync::Arc;

use tonic::{Request, Status};

use crate::error::ProxyError;
use crate::proto::authpb::permission::Type as PermType;
use crate::proto::etcdserverpb::{request_op, DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest};
use crate::rbac::Permits;

/// The caller's permits, if the gateway checks this request.
pub(crate) fn of<T>(request: &Request<T>) -> Option<&Arc<Permits>> {
    of_extensions(request.extensions())
}

pub(crate) fn of_extensions(extensions: &tonic::Extensions) -> Option<&Arc<Permits>> {
    extensions.get::<Arc<Permits>>().filter(|p| !p.is_everything())
}

fn refused(e: impl Into<ProxyError>) -> Status {
    e.into().to_status()
}

/// etcd validates a request before it looks at permissions: a request without a key is
/// refused for that, whoever sends it.
fn key_given(key: &[u8]) -> Result<(), Status> {
    if key.is_empty() {
        Err(refused(ProxyError::EmptyKey))
    } else {
        Ok(())
    }
}

pub(crate) fn range(request: &Request<RangeRequest>) -> Result<(), Status> {
    let Some(p) = of(request) else { return Ok(()) };
    let r = request.get_ref();
    key_given(&r.key)?;
    p.check_range(&r.key, &r.range_end, PermType::Read).map_err(refused)
}

pub(crate) fn put(request: &Request<PutRequest>) -> Result<(), Status> {
    let Some(p) = of(request) else { return Ok(()) };
    let r = request.get_ref();
    key_given(&r.key)?;
    p.check_put(&r.key, r.prev_kv).map_err(refused)
}

pub(crate) fn delete_range(request: &Request<DeleteRangeRequest>) -> Result<(), Status> {
    let Some(p) = of(request) else { return Ok(()) };
    let r = request.get_ref();
    key_given(&r.key)?;
    p.check_delete(&r.key, &r.range_end, r.prev_kv).map_err(refused)
}

/// Every op's key is given (nested Txns included), as etcd validates a Txn.
fn txn_keys_given(txn: &TxnRequest) -> Result<(), Status> {
    for op in txn.success.iter().chain(&txn.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => key_given(&r.key)?,
            Some(request_op::Request::RequestPut(r)) => key_given(&r.key)?,
            Some(request_op::Request::RequestDeleteRange(r)) => key_given(&r.key)?,
            Some(request_op::Request::RequestTxn(t)) => txn_keys_given(t)?,
            None => {}
        }
    }
    Ok(())
}

pub(crate) fn txn(request: &Request<TxnRequest>) -> Result<(), Status> {
    let Some(p) = of(request) else { return Ok(()) };
    let t = request.get_ref();
    txn_keys_given(t)?;
    p.check_txn(t).map_err(refused)
}

/// A watch over `[key, range_end)`: read on the whole range (an empty key is the smallest
/// key, as etcd takes it).
pub(crate) fn watch(permits: Option<&Arc<Permits>>, key: &[u8], range_end: &[u8]) -> bool {
    let key = if key.is_empty() { b"\0" } else { key };
    permits.is_none_or(|p| p.check_range(key, range_end, PermType::Read).is_ok())
}

/// Whether the caller may read or write (`wanted`) every key a lease can hold in this
/// context: then the keys on its leases need not be looked up (etcd lets a key be put on a
/// lease, or a lease be revoked, only by a caller that may write every key already on it,
/// and shows a lease only to one that may read them).
pub(crate) fn may_all(permits: &Permits, (key, end): (&[u8], &[u8]), wanted: PermType) -> bool {
    let key = if key.is_empty() { b"\0" } else { key };
    permits.check_range(key, end, wanted).is_ok()
}
