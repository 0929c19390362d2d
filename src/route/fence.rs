//! The write fence, enforced by the datastore itself.
//!
//! Every write the proxy forwards (Put, DeleteRange, Txn) travels inside a guard Txn:
//!
//! ```text
//! Txn{ compare: [version(fence_key) == 0],
//!      success: [the client's operation],
//!      failure: [Range(fence_key)] }
//! ```
//!
//! so a datastore holding the fence key refuses the write whichever proxy sent it, even
//! one that has not noticed the fence or restarted with a stale configuration. The client
//! gets the inner answer back unchanged, with the outer header (which is what etcd would
//! have put on the bare request).

use bytes::{Bytes, BytesMut};

use crate::proto::etcdserverpb::{
    compare, request_op, response_op, Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RequestOp, ResponseHeader, TxnRequest, TxnResponse,
};

/// The message a write gets while the tenant is fenced and writes are rejected.
pub const FREEZE_MESSAGE: &str =
    "the current Control Plane is in freezing mode due to a maintenance mode, all the changes are blocked";

/// cutover's own keys sit under the tenant prefix, after this marker: inside the key space
/// the tenant's credentials may touch, and sorted before every ordinary key (a NUL byte).
pub const RESERVED_MARKER: &[u8] = b"\x00cutover/";

/// The reserved key prefix for a tenant prefix.
pub fn reserved_prefix(tenant_prefix: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(tenant_prefix.len() + RESERVED_MARKER.len());
    b.extend_from_slice(tenant_prefix);
    b.extend_from_slice(RESERVED_MARKER);
    b.freeze()
}

/// The datastore refused the write because the fence key exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fenced {
    /// The fence key's value: who fenced, or where the tenant moved.
    pub holder: Bytes,
}

/// A datastore answer that does not have the shape the guard asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the datastore answered the guarded write with an unexpected shape: {0}")]
pub struct Malformed(pub &'static str);

/// Wraps writes in the guard Txn and unwraps the answers.
#[derive(Debug, Clone)]
pub struct Guard {
    fence_key: Bytes,
}

/// A client write the guard can carry.
pub trait Guarded: Sized {
    type Response;
    /// Whether the write keeps off cutover's reserved keys.
    fn allowed(&self, scope: &super::scope::Scope) -> bool;
    /// Takes reserved keys out of the answer's reads (only a Txn has any).
    fn hide_reserved(_resp: &mut Self::Response, _scope: &super::scope::Scope) {}
    fn into_op(self) -> request_op::Request;
    /// The inner answer, with the outer header; `None` if it is not this write's kind.
    fn from_op(op: response_op::Response, header: Option<ResponseHeader>) -> Option<Self::Response>;
}

impl Guarded for PutRequest {
    type Response = PutResponse;
    fn allowed(&self, scope: &super::scope::Scope) -> bool {
        scope.in_tenant(&self.key, b"") && !scope.is_reserved(&self.key)
    }
    fn into_op(self) -> request_op::Request {
        request_op::Request::RequestPut(self)
    }
    fn from_op(op: response_op::Response, header: Option<ResponseHeader>) -> Option<PutResponse> {
        match op {
            response_op::Response::ResponsePut(r) => Some(PutResponse { header, ..r }),
            _ => None,
        }
    }
}

impl Guarded for DeleteRangeRequest {
    type Response = DeleteRangeResponse;
    fn allowed(&self, scope: &super::scope::Scope) -> bool {
        scope.in_tenant(&self.key, &self.range_end) && !scope.touches_reserved(&self.key, &self.range_end)
    }
    fn into_op(self) -> request_op::Request {
        request_op::Request::RequestDeleteRange(self)
    }
    fn from_op(op: response_op::Response, header: Option<ResponseHeader>) -> Option<DeleteRangeResponse> {
        match op {
            response_op::Response::ResponseDeleteRange(r) => Some(DeleteRangeResponse { header, ..r }),
            _ => None,
        }
    }
}

impl Guarded for TxnRequest {
    type Response = TxnResponse;
    fn allowed(&self, scope: &super::scope::Scope) -> bool {
        scope.txn_allowed(self)
    }
    fn hide_reserved(resp: &mut TxnResponse, scope: &super::scope::Scope) {
        scope.hide_in_txn(resp);
    }
    fn into_op(self) -> request_op::Request {
        request_op::Request::RequestTxn(self)
    }
    fn from_op(op: response_op::Response, header: Option<ResponseHeader>) -> Option<TxnResponse> {
        match op {
            response_op::Response::ResponseTxn(r) => Some(TxnResponse { header, ..r }),
            _ => None,
        }
    }
}

impl Guard {
    pub fn new(tenant_prefix: &[u8]) -> Self {
        let mut key = BytesMut::from(&reserved_prefix(tenant_prefix)[..]);
        key.extend_from_slice(b"fence");
        Guard {
            fence_key: key.freeze(),
        }
    }

    pub fn fence_key(&self) -> &Bytes {
        &self.fence_key
    }

    /// The guard Txn around one client write.
    pub fn wrap<W: Guarded>(&self, write: W) -> TxnRequest {
        TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Version as i32,
                key: self.fence_key.clone(),
                range_end: Bytes::new(),
                target_union: Some(compare::TargetUnion::Version(0)),
            }],
            success: vec![RequestOp {
                request: Some(write.into_op()),
            }],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: self.fence_key.clone(),
                    ..Default::default()
                })),
            }],
        }
    }

    /// The same write without the fence check, for clients whose credentials may not read
    /// the fence key: it needs exactly the permissions of the bare write, and answers in
    /// the same shape as [`Guard::wrap`] (always "succeeded").
    pub fn bare<W: Guarded>(&self, write: W) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success: vec![RequestOp {
                request: Some(write.into_op()),
            }],
            failure: vec![],
        }
    }

    /// The client's answer, or who holds the fence.
    pub fn unwrap<W: Guarded>(&self, resp: TxnResponse) -> Result<Result<W::Response, Fenced>, Malformed> {
        let header = resp.header;
        let op = resp
            .responses
            .into_iter()
            .next()
            .and_then(|r| r.response)
            .ok_or(Malformed("no response op"))?;
        if resp.succeeded {
            return W::from_op(op, header)
                .map(Ok)
                .ok_or(Malformed("inner response of another kind"));
        }
        match op {
            response_op::Response::ResponseRange(r) => Ok(Err(Fenced {
                holder: r.kvs.into_iter().next().map(|kv| kv.value).unwrap_or_default(),
            })),
            _ => Err(Malformed("failure branch is not the fence read")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{RangeResponse, ResponseOp};
    use crate::proto::mvccpb::KeyValue;

    fn header(rev: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: 1,
            member_id: 2,
            revision: rev,
            raft_term: 3,
        })
    }

    #[test]
    fn the_fence_key_is_reserved_under_the_tenant_prefix() {
        let g = Guard::new(b"/tenant-a/");
        assert_eq!(&g.fence_key()[..], b"/tenant-a/\x00cutover/fence");
        assert!(g.fence_key().starts_with(b"/tenant-a/"));
        // Before any ordinary key of the tenant.
        assert!(g.fence_key()[..] < b"/tenant-a/registry"[..]);
    }

    #[test]
    fn a_put_is_guarded_and_its_answer_comes_back_with_the_outer_header() {
        let g = Guard::new(b"");
        let put = PutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            prev_kv: true,
            ..Default::default()
        };
        let txn = g.wrap(put.clone());
        assert_eq!(txn.compare[0].key, g.fence_key().clone());
        assert_eq!(txn.compare[0].target_union, Some(compare::TargetUnion::Version(0)));
        assert_eq!(txn.success[0].request, Some(request_op::Request::RequestPut(put)));

        let inner = PutResponse {
            header: Some(ResponseHeader::default()),
            prev_kv: Some(KeyValue {
                key: Bytes::from_static(b"k"),
                ..Default::default()
            }),
        };
        let resp = TxnResponse {
            header: header(7),
            succeeded: true,
            responses: vec![ResponseOp {
                response: Some(response_op::Response::ResponsePut(inner.clone())),
            }],
        };
        let out = g.unwrap::<PutRequest>(resp).unwrap().unwrap();
        assert_eq!(out.header, header(7));
        assert_eq!(out.prev_kv, inner.prev_kv);
    }

    #[test]
    fn a_fenced_store_says_who_holds_the_fence() {
        let g = Guard::new(b"");
        let resp = TxnResponse {
            header: header(9),
            succeeded: false,
            responses: vec![ResponseOp {
                response: Some(response_op::Response::ResponseRange(RangeResponse {
                    kvs: vec![KeyValue {
                        value: Bytes::from_static(b"migration m1"),
                        ..Default::default()
                    }],
                    count: 1,
                    ..Default::default()
                })),
            }],
        };
        assert_eq!(
            g.unwrap::<DeleteRangeRequest>(resp).unwrap(),
            Err(Fenced {
                holder: Bytes::from_static(b"migration m1")
            })
        );
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        let g = Guard::new(b"");
        let empty = TxnResponse {
            header: header(1),
            succeeded: true,
            responses: vec![],
        };
        assert!(g.unwrap::<TxnRequest>(empty).is_err());
        let wrong = TxnResponse {
            header: header(1),
            succeeded: true,
            responses: vec![ResponseOp {
                response: Some(response_op::Response::ResponseRange(RangeResponse::default())),
            }],
        };
        assert!(g.unwrap::<PutRequest>(wrong).is_err());
    }
}
