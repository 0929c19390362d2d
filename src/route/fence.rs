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
//!
//! Linearizable reads carry a guard too, of another shape: the read and a read of the
//! fence key in one Txn whose every op is a Range,
//!
//! ```text
//! Txn{ success: [the client's Range, Range(fence_key)] }          a Range
//! Txn{ compare: [the client's], success: [..., Range(fence_key)],
//!                                failure: [..., Range(fence_key)] }  a read-only Txn
//! ```
//!
//! which etcd serves on its read path (a read index, no raft entry), at one revision. An
//! answer that shows the "moved" marker came from a store the tenant has left, and must
//! not reach the client: the read waits for this replica's route and goes to the new
//! store (server/mod.rs).

use bytes::{Bytes, BytesMut};

use crate::codec::wire::{self, Encoded, TxnAnswer};

use crate::proto::etcdserverpb::{
    compare, request_op, response_op, Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};

pub use crate::keys::reserved_prefix;

/// What cutover keeps in its keys of a datastore (JSON, readable with etcdctl): the lock
/// and fence of a migration, the permanent "moved" marker, and a target's claim.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum Marker {
    /// A migration is running from this datastore (bound to the migration's lease).
    Lock {
        migration: String,
        leader: String,
        to: String,
    },
    /// The datastore refuses the tenant's writes while a migration drains and commits
    /// (bound to the migration's lease).
    Fenced { migration: String, to: String },
    /// The tenant lives in datastore `to` now; this one keeps refusing its writes. `at` is
    /// the commit's S (the virtual revision the translation starts from): commits of one
    /// tenant have ever larger ones, so a marker left on a store the tenant came back to
    /// later is known to be stale (0: a marker written before markers carried it).
    Moved {
        migration: String,
        to: String,
        #[serde(default)]
        at: i64,
    },
    /// (On a target, in its claim key) a migration from datastore `from` is copying the
    /// tenant here: what it wrote is its own, and a retry after it died may clear it.
    Copying {
        migration: String,
        from: String,
        leader: String,
    },
}

impl Marker {
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// The marker `value` holds, if it is one. Every guarded read brings the fence key's
    /// value, almost always empty: that answer is known without the JSON parser (whose
    /// error for it is an allocation per request).
    pub fn parse(value: &[u8]) -> Option<Marker> {
        if value.first() != Some(&b'{') {
            return None;
        }
        serde_json::from_slice(value).ok()
    }

    /// Where the tenant went, if `value` (a fence key's) is the "moved" marker.
    pub fn moved_to(value: &[u8]) -> Option<String> {
        match Marker::parse(value) {
            Some(Marker::Moved { to, .. }) => Some(to),
            _ => None,
        }
    }
}

/// The datastore refused the write because the fence key exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fenced {
    /// The fence key's value: who fenced, or where the tenant moved.
    pub holder: Bytes,
}

pub use crate::error::Malformed;

/// What a guarded write came back with.
#[derive(Debug, Clone, PartialEq)]
pub enum GuardAnswer<R> {
    /// The store was not fenced; the write was applied and this is its answer.
    Applied(R),
    /// The store holds the fence (or the "moved" marker); nothing was applied.
    Fenced(Fenced),
}

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
    /// The number of this write's answer in a ResponseOp (`wire::OP_PUT`, ...).
    const OP: u32;
    /// Whether etcd's answer reaches the client unchanged when no translation is active
    /// (nothing in it to hide).
    fn passes_unchanged(&self, _scope: &super::scope::Scope) -> bool {
        true
    }
}

impl Guarded for PutRequest {
    type Response = PutResponse;
    const OP: u32 = wire::OP_PUT;
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
    const OP: u32 = wire::OP_DELETE_RANGE;
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
    const OP: u32 = wire::OP_TXN;
    fn allowed(&self, scope: &super::scope::Scope) -> bool {
        scope.txn_allowed(self)
    }
    fn passes_unchanged(&self, scope: &super::scope::Scope) -> bool {
        !scope.txn_reads_reserved(self)
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

/// A read the read guard can carry.
pub trait GuardedRead: Sized {
    type Response;
    /// The read as a Txn of Ranges; with `fence` added to every branch if given.
    fn into_txn(self, fence: Option<RequestOp>) -> TxnRequest;
    /// The client's answer (with the outer header), and the fence read's answer if the
    /// Txn carried one: `Some(value)` (empty when the key does not exist).
    fn split(resp: TxnResponse, guarded: bool) -> Result<(Self::Response, Option<Bytes>), Malformed>;
    /// As `split`, on etcd's encoded answer: the client's answer as etcd encoded it
    /// (`None`: it must be decoded, see [`TxnAnswer::inner_with_outer_header`]).
    fn split_encoded(resp: &TxnAnswer, guarded: bool) -> Result<(Option<Encoded>, Option<Bytes>), Malformed>;
    /// Whether etcd's answer reaches the client unchanged when no translation is active
    /// (nothing in it to hide).
    fn passes_unchanged(&self, _scope: &super::scope::Scope) -> bool {
        true
    }
}

/// The value the fence read at the end of a guarded answer found.
fn fence_value_encoded(resp: &TxnAnswer, guarded: bool) -> Result<Option<Bytes>, Malformed> {
    if !guarded {
        return Ok(None);
    }
    resp.read_value(&resp.last_op()?).map(Some)
}

fn fence_value(op: Option<ResponseOp>) -> Result<Bytes, Malformed> {
    match op.and_then(|r| r.response) {
        Some(response_op::Response::ResponseRange(r)) => {
            Ok(r.kvs.into_iter().next().map(|kv| kv.value).unwrap_or_default())
        }
        _ => Err(Malformed("the fence read is missing from the guarded read's answer")),
    }
}

impl GuardedRead for RangeRequest {
    type Response = RangeResponse;
    fn into_txn(self, fence: Option<RequestOp>) -> TxnRequest {
        let mut success = vec![RequestOp {
            request: Some(request_op::Request::RequestRange(self)),
        }];
        success.extend(fence);
        TxnRequest {
            compare: vec![],
            success,
            failure: vec![],
        }
    }
    fn split(resp: TxnResponse, guarded: bool) -> Result<(RangeResponse, Option<Bytes>), Malformed> {
        let header = resp.header;
        let mut ops = resp.responses.into_iter();
        let range = match ops.next().and_then(|r| r.response) {
            Some(response_op::Response::ResponseRange(r)) => RangeResponse { header, ..r },
            _ => return Err(Malformed("the guarded read's answer is not a Range")),
        };
        let fence = if guarded { Some(fence_value(ops.next())?) } else { None };
        Ok((range, fence))
    }
    fn split_encoded(resp: &TxnAnswer, guarded: bool) -> Result<(Option<Encoded>, Option<Bytes>), Malformed> {
        if resp.ops != 1 + usize::from(guarded) {
            return Err(Malformed("the guarded read's answer has another number of ops"));
        }
        let op = resp.first_op()?;
        if op.kind != wire::OP_RANGE {
            return Err(Malformed("the guarded read's answer is not a Range"));
        }
        Ok((resp.inner_with_outer_header(&op)?, fence_value_encoded(resp, guarded)?))
    }
}

impl GuardedRead for TxnRequest {
    type Response = TxnResponse;
    fn into_txn(mut self, fence: Option<RequestOp>) -> TxnRequest {
        if let Some(f) = fence {
            self.success.push(f.clone());
            self.failure.push(f);
        }
        self
    }
    fn split(mut resp: TxnResponse, guarded: bool) -> Result<(TxnResponse, Option<Bytes>), Malformed> {
        let fence = if guarded {
            Some(fence_value(resp.responses.pop())?)
        } else {
            None
        };
        Ok((resp, fence))
    }
    fn split_encoded(resp: &TxnAnswer, guarded: bool) -> Result<(Option<Encoded>, Option<Bytes>), Malformed> {
        let answer = if guarded { resp.without_last_op()? } else { resp.whole() };
        Ok((Some(answer), fence_value_encoded(resp, guarded)?))
    }
    fn passes_unchanged(&self, scope: &super::scope::Scope) -> bool {
        !scope.txn_reads_reserved(self)
    }
}

/// Whether a Txn only reads: every op of both branches is a Range (a nested Txn is not:
/// etcd sends such a Txn through raft).
pub fn is_read_only(txn: &TxnRequest) -> bool {
    txn.success
        .iter()
        .chain(&txn.failure)
        .all(|op| matches!(op.request, Some(request_op::Request::RequestRange(_))))
}

/// Whether every Range of a read-only Txn is serializable (etcd then answers from the
/// member's own state, with no read index: such a read may be stale by definition).
pub fn is_serializable(txn: &TxnRequest) -> bool {
    txn.success.iter().chain(&txn.failure).all(|op| match &op.request {
        Some(request_op::Request::RequestRange(r)) => r.serializable,
        _ => false,
    })
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

    /// The read of the fence key a guarded read carries (linearizable, as the reads it
    /// guards).
    pub fn fence_read(&self) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: self.fence_key.clone(),
                ..Default::default()
            })),
        }
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

    /// As [`Guard::unwrap`], on etcd's encoded answer: the client's answer as etcd
    /// encoded it (`None`: it must be decoded), or who holds the fence.
    pub fn unwrap_encoded<W: Guarded>(&self, resp: &TxnAnswer) -> Result<GuardAnswer<Option<Encoded>>, Malformed> {
        let op = resp.first_op()?;
        if resp.succeeded {
            if op.kind != W::OP {
                return Err(Malformed("inner response of another kind"));
            }
            return Ok(GuardAnswer::Applied(resp.inner_with_outer_header(&op)?));
        }
        if op.kind != wire::OP_RANGE {
            return Err(Malformed("failure branch is not the fence read"));
        }
        Ok(GuardAnswer::Fenced(Fenced {
            holder: resp.read_value(&op)?,
        }))
    }

    /// The client's answer, or who holds the fence.
    pub fn unwrap<W: Guarded>(&self, resp: TxnResponse) -> Result<GuardAnswer<W::Response>, Malformed> {
        let header = resp.header;
        let op = resp
            .responses
            .into_iter()
            .next()
            .and_then(|r| r.response)
            .ok_or(Malformed("no response op"))?;
        if resp.succeeded {
            return W::from_op(op, header)
                .map(GuardAnswer::Applied)
                .ok_or(Malformed("inner response of another kind"));
        }
        match op {
            response_op::Response::ResponseRange(r) => Ok(GuardAnswer::Fenced(Fenced {
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

    #[test]
    fn markers_parse_back_and_anything_else_is_none() {
        let markers = [
            Marker::Lock {
                migration: "m-1".into(),
                leader: "host/1".into(),
                to: "b".into(),
            },
            Marker::Fenced {
                migration: "m-1".into(),
                to: "b".into(),
            },
            Marker::Moved {
                migration: "m-1".into(),
                to: "b".into(),
                at: 7,
            },
        ];
        for m in markers {
            assert_eq!(Marker::parse(&m.to_bytes()), Some(m));
        }
        for other in [&b""[..], b" ", b"{", b"null", b"{}", b"moved", b"{\"state\":\"gone\"}"] {
            assert_eq!(Marker::parse(other), None, "{:?}", String::from_utf8_lossy(other));
        }
    }

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
        let GuardAnswer::Applied(out) = g.unwrap::<PutRequest>(resp).unwrap() else {
            panic!("applied")
        };
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
            GuardAnswer::Fenced(Fenced {
                holder: Bytes::from_static(b"migration m1")
            })
        );
    }

    fn range_op_answer(value: Option<&'static [u8]>) -> ResponseOp {
        ResponseOp {
            response: Some(response_op::Response::ResponseRange(RangeResponse {
                kvs: value
                    .map(|v| KeyValue {
                        value: Bytes::from_static(v),
                        ..Default::default()
                    })
                    .into_iter()
                    .collect(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn a_guarded_range_stays_a_txn_of_ranges_and_its_answer_comes_apart() {
        let g = Guard::new(b"/t/");
        let read = RangeRequest {
            key: Bytes::from_static(b"/t/a"),
            limit: 5,
            ..Default::default()
        };
        let txn = read.clone().into_txn(Some(g.fence_read()));
        assert!(is_read_only(&txn) && !is_serializable(&txn));
        assert!(txn.compare.is_empty() && txn.failure.is_empty());
        assert_eq!(
            txn.success[0].request,
            Some(request_op::Request::RequestRange(read.clone()))
        );
        let resp = TxnResponse {
            header: header(12),
            succeeded: true,
            responses: vec![
                range_op_answer(Some(b"v")),
                range_op_answer(Some(b"{\"state\":\"moved\"}")),
            ],
        };
        let (answer, fence) = RangeRequest::split(resp, true).unwrap();
        assert_eq!(answer.header, header(12));
        assert_eq!(answer.kvs[0].value, Bytes::from_static(b"v"));
        assert_eq!(fence.unwrap(), Bytes::from_static(b"{\"state\":\"moved\"}"));

        // Unguarded (the client may not read the fence key): the Range alone.
        let bare = read.into_txn(None);
        assert_eq!(bare.success.len(), 1);
        let resp = TxnResponse {
            header: header(3),
            succeeded: true,
            responses: vec![range_op_answer(None)],
        };
        assert_eq!(RangeRequest::split(resp, false).unwrap().1, None);
    }

    #[test]
    fn a_read_only_txn_reads_the_fence_in_both_branches_and_keeps_its_answer_shape() {
        let g = Guard::new(b"/t/");
        let range = |k: &'static [u8]| RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: Bytes::from_static(k),
                ..Default::default()
            })),
        };
        let client = TxnRequest {
            compare: vec![Compare {
                key: Bytes::from_static(b"/t/a"),
                ..Default::default()
            }],
            success: vec![range(b"/t/a")],
            failure: vec![range(b"/t/b"), range(b"/t/c")],
        };
        assert!(is_read_only(&client));
        let txn = client.clone().into_txn(Some(g.fence_read()));
        assert_eq!(txn.compare, client.compare);
        assert_eq!(txn.success.len(), 2);
        assert_eq!(txn.failure.len(), 3);
        assert_eq!(txn.failure.last(), Some(&g.fence_read()));
        assert!(is_read_only(&txn), "still a read for etcd");
        let resp = TxnResponse {
            header: header(4),
            succeeded: false,
            responses: vec![range_op_answer(None), range_op_answer(None), range_op_answer(None)],
        };
        let (answer, fence) = TxnRequest::split(resp, true).unwrap();
        assert_eq!(answer.responses.len(), 2, "the fence read is taken out");
        assert!(!answer.succeeded);
        assert_eq!(fence, Some(Bytes::new()));

        let mut write = client.clone();
        write.success.push(RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest::default())),
        });
        assert!(!is_read_only(&write));
        let mut nested = client;
        nested.failure.push(RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest::default())),
        });
        assert!(!is_read_only(&nested), "etcd sends a nested Txn through raft");
        assert!(RangeRequest::split(TxnResponse::default(), true).is_err());
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
