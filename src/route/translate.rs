//! Applies a committed [`Translation`] to the messages that cross the proxy: requests on
//! their way to the target (revisions, compares, lease IDs) and answers on their way back
//! (headers, key-values, events). Pure logic: no I/O.

use bytes::Bytes;

use super::fence::Malformed;
use super::revision::{Compacted, Revisions, Translation};
use crate::proto::etcdserverpb::{
    compare, range_request, request_op, response_op, CompactionRequest, Compare, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, TxnRequest, TxnResponse, WatchResponse,
};
use crate::proto::mvccpb::{Event, KeyValue};

/// Most keys of K whose version a single Txn may compare: each one doubles the branches
/// of the Txn sent to the target.
pub const MAX_VERSION_COMPARES: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    #[error(transparent)]
    Compacted(#[from] Compacted),
    #[error("a Txn compares the version of {0} migrated keys; cutover translates at most {MAX_VERSION_COMPARES}")]
    TooManyVersionCompares(usize),
}

pub fn header(t: &Translation, h: &mut Option<ResponseHeader>) {
    if let Some(h) = h {
        h.revision = t.to_virtual(h.revision);
    }
}

fn lease_to_target(t: &Translation, id: i64) -> i64 {
    t.leases.get(&id).copied().unwrap_or(id)
}

fn lease_to_virtual(t: &Translation, id: i64) -> i64 {
    if id == 0 || t.leases.is_empty() {
        return id;
    }
    t.leases.iter().find(|(_, tgt)| **tgt == id).map_or(id, |(src, _)| *src)
}

/// A lease ID a client names, as the target knows it.
pub fn lease_id_to_target(t: &Translation, id: i64) -> i64 {
    lease_to_target(t, id)
}

/// A lease ID the target names, as clients know it.
pub fn lease_id_to_virtual(t: &Translation, id: i64) -> i64 {
    lease_to_virtual(t, id)
}

pub fn kv(t: &Translation, kv: &mut KeyValue) {
    let entry = if t.may_be_copied(kv.create_revision) {
        t.keys.get(&kv.key)
    } else {
        None
    };
    kv_given(t, kv, entry);
}

/// Many key-values (a Range's answer, in key order unless it asked for another): their
/// entries in K are read in one walk.
fn kvs(t: &Translation, kvs: &mut [KeyValue]) {
    let asked: Vec<&[u8]> = kvs
        .iter()
        .filter(|kv| t.may_be_copied(kv.create_revision))
        .map(|kv| &kv.key[..])
        .collect();
    let mut found = t.keys.get_sorted(&asked).into_iter();
    for kv in kvs {
        let entry = if t.may_be_copied(kv.create_revision) {
            found.next().flatten()
        } else {
            None
        };
        kv_given(t, kv, entry);
    }
}

fn kv_given(t: &Translation, kv: &mut KeyValue, entry: Option<super::revision::CopiedKey>) {
    let v = t.kv_to_virtual_given(
        entry,
        Revisions {
            create: kv.create_revision,
            modified: kv.mod_revision,
            version: kv.version,
        },
    );
    kv.create_revision = v.create;
    kv.mod_revision = v.modified;
    kv.version = v.version;
    kv.lease = lease_to_virtual(t, kv.lease);
}

pub fn event(t: &Translation, e: &mut Event) {
    if let Some(k) = &mut e.kv {
        kv(t, k);
    }
    if let Some(k) = &mut e.prev_kv {
        kv(t, k);
    }
}

pub fn watch_response(t: &Translation, r: &mut WatchResponse) {
    header(t, &mut r.header);
    if r.compact_revision > 0 {
        // The first revision a new watch may start from.
        r.compact_revision = t.to_virtual(r.compact_revision).max(t.l + 1);
    }
    for e in &mut r.events {
        event(t, e);
    }
}

/// What must be done to a Range answer that the target could not do itself.
#[derive(Debug, Clone, Default)]
pub struct RangeFixup {
    /// The client's request, when filters, sorting or the limit are applied here.
    local: Option<RangeRequest>,
}

fn sorts_by_revision(r: &RangeRequest) -> bool {
    use range_request::SortTarget;
    let target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
    matches!(target, SortTarget::Version | SortTarget::Create | SortTarget::Mod)
}

fn has_revision_filters(r: &RangeRequest) -> bool {
    r.min_mod_revision != 0 || r.max_mod_revision != 0 || r.min_create_revision != 0 || r.max_create_revision != 0
}

/// A Range as the target must see it. Revision filters and revision sorts compare values
/// that differ between the spaces (a copied key keeps its source revisions), so they are
/// applied here, on translated values, as etcd applies them: on the whole range, before
/// the limit.
pub fn range_request(t: &Translation, r: &mut RangeRequest) -> Result<RangeFixup, Compacted> {
    r.revision = t.to_target(r.revision)?;
    if r.count_only {
        // etcd counts before filtering, and sorting cannot change a count.
        r.min_mod_revision = 0;
        r.max_mod_revision = 0;
        r.min_create_revision = 0;
        r.max_create_revision = 0;
        return Ok(RangeFixup::default());
    }
    if !has_revision_filters(r) && !sorts_by_revision(r) {
        return Ok(RangeFixup::default());
    }
    let asked = r.clone();
    r.min_mod_revision = 0;
    r.max_mod_revision = 0;
    r.min_create_revision = 0;
    r.max_create_revision = 0;
    r.limit = 0;
    if sorts_by_revision(r) {
        r.sort_order = 0;
        r.sort_target = 0;
    }
    Ok(RangeFixup { local: Some(asked) })
}

pub fn range_response(t: &Translation, r: &mut RangeResponse, fixup: &RangeFixup) {
    header(t, &mut r.header);
    kvs(t, &mut r.kvs);
    let Some(asked) = &fixup.local else { return };
    r.kvs.retain(|kv| {
        !((asked.max_mod_revision != 0 && kv.mod_revision > asked.max_mod_revision)
            || (asked.min_mod_revision != 0 && kv.mod_revision < asked.min_mod_revision)
            || (asked.max_create_revision != 0 && kv.create_revision > asked.max_create_revision)
            || (asked.min_create_revision != 0 && kv.create_revision < asked.min_create_revision))
    });
    if sorts_by_revision(asked) {
        use range_request::{SortOrder, SortTarget};
        let field = match SortTarget::try_from(asked.sort_target).unwrap_or(SortTarget::Key) {
            SortTarget::Version => |kv: &KeyValue| kv.version,
            SortTarget::Create => |kv: &KeyValue| kv.create_revision,
            _ => |kv: &KeyValue| kv.mod_revision,
        };
        // etcd sorts ascending when a non-key target comes with no order.
        match SortOrder::try_from(asked.sort_order).unwrap_or(SortOrder::None) {
            SortOrder::Descend => r.kvs.sort_by_key(|kv| std::cmp::Reverse(field(kv))),
            _ => r.kvs.sort_by_key(field),
        }
    }
    if asked.limit > 0 && r.kvs.len() > asked.limit as usize {
        r.kvs.truncate(asked.limit as usize);
        r.more = true;
    } else {
        r.more = false;
    }
}

pub fn put_request(t: &Translation, p: &mut PutRequest) {
    p.lease = lease_to_target(t, p.lease);
}

pub fn put_response(t: &Translation, r: &mut PutResponse) {
    header(t, &mut r.header);
    if let Some(k) = &mut r.prev_kv {
        kv(t, k);
    }
}

pub fn delete_response(t: &Translation, r: &mut DeleteRangeResponse) {
    header(t, &mut r.header);
    for k in &mut r.prev_kvs {
        kv(t, k);
    }
}

/// A Compact as the target must see it. Everything up to `s` is, on the target, the state
/// at `t`; compacting there keeps that state readable.
pub fn compact_request(t: &Translation, c: &mut CompactionRequest) {
    c.revision = if c.revision > t.s {
        c.revision - t.s + t.t
    } else {
        t.t.min(c.revision.max(1))
    };
}

/// Which incarnation of a key of K a Txn branch assumes the target holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Incarnation {
    Copied,
    New,
}

/// How a translated Txn must be unwrapped: the number of branch levels around the
/// client's own Txn (one per key of K whose version it compares).
#[derive(Debug, Clone, Copy, Default)]
pub struct TxnShape {
    depth: usize,
}

fn translate_compare(t: &Translation, c: &mut Compare, assume: &[(Bytes, Incarnation)]) {
    use compare::{CompareTarget, TargetUnion};
    let single_key = c.range_end.is_empty();
    match (CompareTarget::try_from(c.target), &mut c.target_union) {
        (Ok(CompareTarget::Mod), Some(TargetUnion::ModRevision(v))) => {
            *v = match t.compare_mod_copied(&c.key, *v).filter(|_| single_key) {
                Some(x) => x,
                None => t.compare_value_new(*v),
            };
        }
        (Ok(CompareTarget::Create), Some(TargetUnion::CreateRevision(v))) => {
            *v = match t.compare_create_copied(&c.key, *v).filter(|_| single_key) {
                Some(x) => x,
                None => t.compare_value_new(*v),
            };
        }
        (Ok(CompareTarget::Version), Some(TargetUnion::Version(v))) => {
            let copied = assume
                .iter()
                .any(|(k, inc)| *inc == Incarnation::Copied && k[..] == c.key[..]);
            if copied {
                if let Some(x) = t.compare_version_copied(&c.key, *v) {
                    *v = x;
                }
            }
        }
        (Ok(CompareTarget::Lease), Some(TargetUnion::Lease(id))) => *id = lease_to_target(t, *id),
        _ => {}
    }
}

fn translate_ops(t: &Translation, ops: &mut [RequestOp], assume: &[(Bytes, Incarnation)]) -> Result<(), Compacted> {
    for op in ops {
        match &mut op.request {
            Some(request_op::Request::RequestRange(r)) => {
                // Filters and revision sorts inside a Txn are passed as they are.
                r.revision = t.to_target(r.revision)?;
            }
            Some(request_op::Request::RequestPut(p)) => put_request(t, p),
            Some(request_op::Request::RequestTxn(inner)) => translate_txn_body(t, inner, assume)?,
            _ => {}
        }
    }
    Ok(())
}

fn translate_txn_body(t: &Translation, txn: &mut TxnRequest, assume: &[(Bytes, Incarnation)]) -> Result<(), Compacted> {
    for c in &mut txn.compare {
        translate_compare(t, c, assume);
    }
    translate_ops(t, &mut txn.success, assume)?;
    translate_ops(t, &mut txn.failure, assume)
}

/// Keys of K whose version the Txn (or a nested one) compares.
fn version_compared_keys(t: &Translation, txn: &TxnRequest, out: &mut Vec<Bytes>) {
    for c in &txn.compare {
        if c.target == compare::CompareTarget::Version as i32
            && c.range_end.is_empty()
            && t.keys.contains_key(&c.key)
            && !out.contains(&c.key)
        {
            out.push(c.key.clone());
        }
    }
    for op in txn.success.iter().chain(&txn.failure) {
        if let Some(request_op::Request::RequestTxn(inner)) = &op.request {
            version_compared_keys(t, inner, out);
        }
    }
}

/// A Txn as the target must see it. A version compare on a key of K depends on which
/// incarnation the target holds, so the Txn is sent inside one branch per case, chosen by
/// the target itself on the key's create_revision: the decision and the client's Txn are
/// one atomic Txn.
pub fn txn_request(t: &Translation, txn: TxnRequest) -> Result<(TxnRequest, TxnShape), TranslateError> {
    let mut keys = Vec::new();
    version_compared_keys(t, &txn, &mut keys);
    if keys.len() > MAX_VERSION_COMPARES {
        return Err(TranslateError::TooManyVersionCompares(keys.len()));
    }
    let shape = TxnShape { depth: keys.len() };
    Ok((branch(t, &txn, &keys, &mut Vec::new())?, shape))
}

fn branch(
    t: &Translation,
    txn: &TxnRequest,
    keys: &[Bytes],
    assume: &mut Vec<(Bytes, Incarnation)>,
) -> Result<TxnRequest, Compacted> {
    let Some((key, rest)) = keys.split_first() else {
        let mut leaf = txn.clone();
        translate_txn_body(t, &mut leaf, assume)?;
        return Ok(leaf);
    };
    // Every key here is in K (see `version_compared_keys`).
    let copied_create = t.keys.get(key).map_or(0, |k| k.target_create);
    let mut arm = |inc: Incarnation| -> Result<RequestOp, Compacted> {
        assume.push((key.clone(), inc));
        let inner = branch(t, txn, rest, assume);
        assume.pop();
        Ok(RequestOp {
            request: Some(request_op::Request::RequestTxn(inner?)),
        })
    };
    let success = arm(Incarnation::Copied)?;
    let failure = arm(Incarnation::New)?;
    Ok(TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Create as i32,
            key: key.clone(),
            range_end: Bytes::new(),
            target_union: Some(compare::TargetUnion::CreateRevision(copied_create)),
        }],
        success: vec![success],
        failure: vec![failure],
    })
}

/// The client's Txn answer out of the branches, in the client's revision space.
pub fn txn_response(t: &Translation, mut resp: TxnResponse, shape: TxnShape) -> Result<TxnResponse, Malformed> {
    let header_ = resp.header;
    for _ in 0..shape.depth {
        resp = match resp.responses.into_iter().next().and_then(|r| r.response) {
            Some(response_op::Response::ResponseTxn(inner)) => inner,
            _ => return Err(Malformed("a migration branch without its Txn")),
        };
    }
    resp.header = header_;
    txn_response_body(t, &mut resp);
    Ok(resp)
}

fn txn_response_body(t: &Translation, resp: &mut TxnResponse) {
    header(t, &mut resp.header);
    for r in &mut resp.responses {
        match &mut r.response {
            Some(response_op::Response::ResponseRange(x)) => range_response(t, x, &RangeFixup::default()),
            Some(response_op::Response::ResponsePut(x)) => put_response(t, x),
            Some(response_op::Response::ResponseDeleteRange(x)) => delete_response(t, x),
            Some(response_op::Response::ResponseTxn(x)) => txn_response_body(t, x),
            None => {}
        }
    }
}

impl From<TranslateError> for crate::error::ProxyError {
    fn from(e: TranslateError) -> Self {
        match e {
            TranslateError::Compacted(c) => crate::error::ProxyError::Compacted(c),
            other => crate::error::ProxyError::Untranslatable(other.to_string()),
        }
    }
}

/// A client write, as the target must see it and as its answer must come back.
pub trait Translate: Sized {
    type Answer;
    fn to_target(self, t: &Translation) -> Result<(Self, TxnShape), TranslateError>;
    fn answer_to_virtual(a: Self::Answer, t: &Translation, shape: TxnShape) -> Result<Self::Answer, Malformed>;
}

impl Translate for PutRequest {
    type Answer = PutResponse;
    fn to_target(mut self, t: &Translation) -> Result<(Self, TxnShape), TranslateError> {
        put_request(t, &mut self);
        Ok((self, TxnShape::default()))
    }
    fn answer_to_virtual(mut a: PutResponse, t: &Translation, _: TxnShape) -> Result<PutResponse, Malformed> {
        put_response(t, &mut a);
        Ok(a)
    }
}

impl Translate for crate::proto::etcdserverpb::DeleteRangeRequest {
    type Answer = DeleteRangeResponse;
    fn to_target(self, _: &Translation) -> Result<(Self, TxnShape), TranslateError> {
        Ok((self, TxnShape::default()))
    }
    fn answer_to_virtual(
        mut a: DeleteRangeResponse,
        t: &Translation,
        _: TxnShape,
    ) -> Result<DeleteRangeResponse, Malformed> {
        delete_response(t, &mut a);
        Ok(a)
    }
}

impl Translate for TxnRequest {
    type Answer = TxnResponse;
    fn to_target(self, t: &Translation) -> Result<(Self, TxnShape), TranslateError> {
        txn_request(t, self)
    }
    fn answer_to_virtual(a: TxnResponse, t: &Translation, shape: TxnShape) -> Result<TxnResponse, Malformed> {
        txn_response(t, a, shape)
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::proto::etcdserverpb::ResponseOp;

    fn translation() -> Translation {
        crate::route::revision::sample()
    }

    fn kv_at(key: &'static [u8], create: i64, modified: i64, version: i64) -> KeyValue {
        KeyValue {
            key: Bytes::from_static(key),
            create_revision: create,
            mod_revision: modified,
            version,
            ..Default::default()
        }
    }

    #[test]
    fn ranges_at_old_revisions_are_compacted_and_later_ones_shifted() {
        let t = translation();
        let mut r = RangeRequest {
            revision: 89,
            ..Default::default()
        };
        assert!(range_request(&t, &mut r).is_err());
        let mut r = RangeRequest {
            revision: 1105,
            ..Default::default()
        };
        range_request(&t, &mut r).unwrap();
        assert_eq!(r.revision, 55);
    }

    #[test]
    fn revision_filters_and_sorts_apply_to_translated_values() {
        let t = translation();
        let mut r = RangeRequest {
            key: Bytes::from_static(b"a"),
            range_end: Bytes::from_static(b"z"),
            min_mod_revision: 41,
            sort_target: range_request::SortTarget::Mod as i32,
            sort_order: range_request::SortOrder::Descend as i32,
            limit: 1,
            ..Default::default()
        };
        let fix = range_request(&t, &mut r).unwrap();
        assert_eq!((r.min_mod_revision, r.limit, r.sort_target), (0, 0, 0));
        // "a" is the copied key (virtual mod 40: filtered out); "b" and "c" were written
        // after the commit.
        let mut resp = RangeResponse {
            kvs: vec![kv_at(b"a", 12, 30, 2), kv_at(b"b", 51, 51, 1), kv_at(b"c", 52, 60, 2)],
            count: 3,
            ..Default::default()
        };
        range_response(&t, &mut resp, &fix);
        assert_eq!(resp.kvs.len(), 1);
        assert_eq!(&resp.kvs[0].key[..], b"c");
        assert_eq!(resp.kvs[0].mod_revision, 1110);
        assert!(resp.more);
        assert_eq!(resp.count, 3, "etcd counts before filtering");
    }

    #[test]
    fn a_version_compare_on_a_copied_key_branches_on_the_incarnation() {
        let t = translation();
        let txn = TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Version as i32,
                key: Bytes::from_static(b"a"),
                range_end: Bytes::new(),
                target_union: Some(compare::TargetUnion::Version(7)),
            }],
            ..Default::default()
        };
        let (sent, shape) = txn_request(&t, txn).unwrap();
        assert_eq!(shape.depth, 1);
        assert_eq!(
            sent.compare[0].target_union,
            Some(compare::TargetUnion::CreateRevision(12))
        );
        let arm = |op: &RequestOp| match &op.request {
            Some(request_op::Request::RequestTxn(x)) => x.compare[0].target_union.clone(),
            _ => None,
        };
        // Copied incarnation: virtual version 7 is target version 2; a new one counts from 1.
        assert_eq!(arm(&sent.success[0]), Some(compare::TargetUnion::Version(2)));
        assert_eq!(arm(&sent.failure[0]), Some(compare::TargetUnion::Version(7)));

        let answer = TxnResponse {
            header: Some(ResponseHeader {
                revision: 60,
                ..Default::default()
            }),
            succeeded: true,
            responses: vec![ResponseOp {
                response: Some(response_op::Response::ResponseTxn(TxnResponse {
                    succeeded: false,
                    ..Default::default()
                })),
            }],
        };
        let back = txn_response(&t, answer, shape).unwrap();
        assert!(!back.succeeded, "the client's own outcome, not the branch's");
        assert_eq!(back.header.unwrap().revision, 1110);
    }

    #[test]
    fn mod_revision_compares_need_no_branch() {
        let t = translation();
        let txn = TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Mod as i32,
                key: Bytes::from_static(b"a"),
                range_end: Bytes::new(),
                target_union: Some(compare::TargetUnion::ModRevision(40)),
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: Bytes::from_static(b"a"),
                    lease: 7,
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        let (sent, shape) = txn_request(&t, txn).unwrap();
        assert_eq!(shape.depth, 0);
        assert_eq!(
            sent.compare[0].target_union,
            Some(compare::TargetUnion::ModRevision(30))
        );
        match &sent.success[0].request {
            Some(request_op::Request::RequestPut(p)) => assert_eq!(p.lease, 9, "lease ID taken on the target"),
            _ => panic!("put expected"),
        }
    }

    #[test]
    fn events_and_compactions_come_back_in_the_client_space() {
        let t = translation();
        let mut w = WatchResponse {
            compact_revision: 20,
            events: vec![Event {
                kv: Some(kv_at(b"a", 12, 55, 3)),
                prev_kv: Some(kv_at(b"a", 12, 30, 2)),
                ..Default::default()
            }],
            ..Default::default()
        };
        watch_response(&t, &mut w);
        assert_eq!(w.compact_revision, 91);
        let e = &w.events[0];
        assert_eq!(e.kv.as_ref().unwrap().mod_revision, 1105);
        assert_eq!(e.kv.as_ref().unwrap().version, 8);
        assert_eq!(e.prev_kv.as_ref().unwrap().mod_revision, 40);
    }
}
