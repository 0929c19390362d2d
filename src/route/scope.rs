//! cutover's reserved keys (`<prefix>\0cutover/...`: the fence, the translation record) are
//! not the tenant's: clients may not write, delete or compare on them, and reads and
//! watches never show them. Pure logic over etcd's key-range conventions.

use bytes::Bytes;

use crate::error::Malformed;
use crate::keys::{overlaps, reserved_prefix};
use crate::proto::etcdserverpb::{
    compare, request_op, response_op, Compare, DeleteRangeRequest, DeleteRangeResponse, RequestOp, TxnRequest,
    TxnResponse,
};

/// kube-apiserver's compactor keeps its bookkeeping in this key at the root of the key
/// space, outside any `--etcd-prefix`: a tenant's proxy lets it through.
pub const KUBE_COMPACT_KEY: &[u8] = b"compact_rev_key";

#[derive(Debug, Clone)]
pub struct Scope {
    reserved: Bytes,
    reserved_end: Bytes,
    /// The tenant's range [start, end); `None` when the tenant has the whole key space.
    tenant: Option<(Bytes, Bytes)>,
}

impl Scope {
    pub fn new(tenant_prefix: &[u8]) -> Scope {
        let reserved = reserved_prefix(tenant_prefix);
        let reserved_end = crate::keys::prefix_end(&reserved);
        let tenant = (!tenant_prefix.is_empty()).then(|| {
            (
                Bytes::copy_from_slice(tenant_prefix),
                crate::keys::prefix_end(tenant_prefix),
            )
        });
        Scope {
            reserved,
            reserved_end,
            tenant,
        }
    }

    /// Whether the range [key, end) lies inside the tenant's prefix (etcd's range
    /// conventions; kube-apiserver's compaction key is let through as well).
    pub fn in_tenant(&self, key: &[u8], end: &[u8]) -> bool {
        let Some((lo, hi)) = &self.tenant else { return true };
        let to_the_end = hi[..] == b"\0"[..];
        match end {
            [] => (key >= &lo[..] && (to_the_end || key < &hi[..])) || key == KUBE_COMPACT_KEY,
            [0] => to_the_end && key >= &lo[..],
            _ => key >= &lo[..] && (to_the_end || end <= &hi[..]),
        }
    }

    /// The tenant's keys as a request's range (`["", "\0")`: every key).
    pub fn tenant_range(&self) -> (&[u8], &[u8]) {
        match &self.tenant {
            Some((lo, hi)) => (lo, hi),
            None => (b"", b"\0"),
        }
    }

    /// Whether `key` lies under the tenant's prefix itself (kube-apiserver's compaction
    /// key, shared by every tenant of a datastore, does not).
    pub fn in_prefix(&self, key: &[u8]) -> bool {
        self.tenant
            .as_ref()
            .is_none_or(|(lo, hi)| key >= &lo[..] && (hi[..] == b"\0"[..] || key < &hi[..]))
    }

    pub fn is_reserved(&self, key: &[u8]) -> bool {
        key.starts_with(&self.reserved)
    }

    /// Whether the range [key, end) includes any reserved key.
    pub fn touches_reserved(&self, key: &[u8], end: &[u8]) -> bool {
        overlaps(key, end, &self.reserved, &self.reserved_end)
    }

    /// The reserved part of a range, as (key, range_end) for a count.
    pub fn reserved_part(&self, key: &[u8], end: &[u8]) -> (Bytes, Bytes) {
        let start = if key > &self.reserved[..] {
            Bytes::copy_from_slice(key)
        } else {
            self.reserved.clone()
        };
        let stop = match end {
            [0] => self.reserved_end.clone(),
            e if e < &self.reserved_end[..] => Bytes::copy_from_slice(e),
            _ => self.reserved_end.clone(),
        };
        (start, stop)
    }

    fn compare_allowed(&self, c: &Compare) -> bool {
        // Compares stay inside the tenant and off the reserved keys.
        self.in_tenant(&c.key, &c.range_end) && !self.touches_reserved(&c.key, &c.range_end)
    }

    fn op_allowed(&self, op: &RequestOp) -> bool {
        match &op.request {
            // Reads may span the reserved keys; their answers are filtered (hide_in_txn).
            Some(request_op::Request::RequestRange(r)) => self.in_tenant(&r.key, &r.range_end),
            Some(request_op::Request::RequestPut(p)) => self.in_tenant(&p.key, b"") && !self.is_reserved(&p.key),
            Some(request_op::Request::RequestDeleteRange(d)) => {
                self.in_tenant(&d.key, &d.range_end) && !self.touches_reserved(&d.key, &d.range_end)
            }
            Some(request_op::Request::RequestTxn(t)) => self.txn_allowed(t),
            None => true,
        }
    }

    /// Whether a client Txn keeps off the reserved keys: no compare on them and no write
    /// to them, nested Txns included. Reads may span them (see `hide_in_txn`).
    pub fn txn_allowed(&self, txn: &TxnRequest) -> bool {
        txn.compare.iter().all(|c| self.compare_allowed(c))
            && txn.success.iter().all(|o| self.op_allowed(o))
            && txn.failure.iter().all(|o| self.op_allowed(o))
    }

    /// Whether a Range of a Txn (nested ones included) may find reserved keys, which
    /// `hide_in_txn` then takes out of the answer.
    pub fn txn_reads_reserved(&self, txn: &TxnRequest) -> bool {
        txn.success.iter().chain(&txn.failure).any(|op| match &op.request {
            Some(request_op::Request::RequestRange(r)) => self.touches_reserved(&r.key, &r.range_end),
            Some(request_op::Request::RequestTxn(t)) => self.txn_reads_reserved(t),
            _ => false,
        })
    }
}

impl Scope {
    /// The parts of the range [key, end) on either side of the reserved keys, when the
    /// range spans them (a range over the whole tenant prefix, say): `None` when it does
    /// not touch them, or lies inside them.
    pub fn around_reserved(&self, key: &[u8], end: &[u8]) -> Option<Vec<(Bytes, Bytes)>> {
        let inside = self.is_reserved(key) && end <= &self.reserved_end[..] && end != b"\0";
        if end.is_empty() || !self.touches_reserved(key, end) || inside {
            return None;
        }
        let mut parts = Vec::new();
        if key < &self.reserved[..] {
            parts.push((Bytes::copy_from_slice(key), self.reserved.clone()));
        }
        if end == b"\0" || end > &self.reserved_end[..] {
            parts.push((self.reserved_end.clone(), Bytes::copy_from_slice(end)));
        }
        Some(parts)
    }

    /// Whether a Txn (or one nested in it) has a delete or a compare over a range across
    /// the reserved keys, which `rewrite_txn` turns into what etcd would do over the
    /// tenant's keys alone. A look that copies nothing, for the common case of none.
    pub fn txn_needs_rewrite(&self, txn: &TxnRequest) -> bool {
        txn.compare.iter().any(|c| self.parts_of_compare(c).is_some())
            || txn
                .success
                .iter()
                .chain(txn.failure.iter())
                .any(|op| match &op.request {
                    Some(request_op::Request::RequestDeleteRange(d)) => self.parts_of(&d.key, &d.range_end).is_some(),
                    Some(request_op::Request::RequestTxn(t)) => self.txn_needs_rewrite(t),
                    _ => false,
                })
    }

    /// The parts of a tenant's range around the reserved keys, if it spans them.
    fn parts_of(&self, key: &[u8], end: &[u8]) -> Option<Vec<(Bytes, Bytes)>> {
        self.in_tenant(key, end)
            .then(|| self.around_reserved(key, end))
            .flatten()
    }

    fn parts_of_compare(&self, c: &Compare) -> Option<Vec<(Bytes, Bytes)>> {
        self.parts_of(&c.key, &c.range_end)
    }

    /// The Txn to send for one whose deletes or compares span the reserved keys (nested
    /// Txns included), so that it acts on the tenant's keys only, exactly as etcd would if
    /// cutover's keys were not there:
    /// - a delete becomes a Txn without compares deleting the parts on either side (one op
    ///   stays one op);
    /// - a compare over one part is made over that part;
    /// - a compare over two parts cannot be two compares: etcd compares an empty range as
    ///   one all-zero key, so an empty part would count where it should not. The Txn is
    ///   sent inside branches that etcd chooses atomically on which parts hold keys (a
    ///   part is empty when no key in it has a version of 1 or more), and in each the
    ///   compare is made over the parts that do (over both, or the second, when none do).
    ///
    /// `answer_rewritten` turns etcd's answer back into the one the client asked for.
    pub fn rewrite_txn(&self, txn: &TxnRequest) -> TxnRequest {
        let ops = |ops: &[RequestOp]| -> Vec<RequestOp> { ops.iter().map(|op| self.rewrite_op(op)).collect() };
        let success = ops(&txn.success);
        let failure = ops(&txn.failure);
        self.branch_on_parts(Vec::new(), &txn.compare, &success, &failure)
    }

    fn rewrite_op(&self, op: &RequestOp) -> RequestOp {
        let request = match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => match self.split_delete(d) {
                Some(parts) => request_op::Request::RequestTxn(parts),
                None => return op.clone(),
            },
            Some(request_op::Request::RequestTxn(t)) => request_op::Request::RequestTxn(self.rewrite_txn(t)),
            _ => return op.clone(),
        };
        RequestOp { request: Some(request) }
    }

    /// A delete over a tenant's range that spans the reserved keys, as a Txn without
    /// compares deleting the parts on either side (`merge_deletes` answers it as one).
    pub fn split_delete(&self, d: &DeleteRangeRequest) -> Option<TxnRequest> {
        let parts = self.parts_of(&d.key, &d.range_end)?;
        Some(TxnRequest {
            success: parts
                .into_iter()
                .map(|(key, range_end)| RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                        key,
                        range_end,
                        ..d.clone()
                    })),
                })
                .collect(),
            ..Default::default()
        })
    }

    fn branch_on_parts(
        &self,
        mut done: Vec<Compare>,
        rest: &[Compare],
        success: &[RequestOp],
        failure: &[RequestOp],
    ) -> TxnRequest {
        let Some((c, rest)) = rest.split_first() else {
            return TxnRequest {
                compare: done,
                success: success.to_vec(),
                failure: failure.to_vec(),
            };
        };
        let over = |(key, range_end): &(Bytes, Bytes)| Compare {
            key: key.clone(),
            range_end: range_end.clone(),
            ..c.clone()
        };
        let parts = match self.parts_of_compare(c) {
            None => {
                done.push(c.clone());
                return self.branch_on_parts(done, rest, success, failure);
            }
            Some(parts) if parts.len() == 1 => {
                done.push(over(&parts[0]));
                return self.branch_on_parts(done, rest, success, failure);
            }
            Some(parts) => parts,
        };
        let (first, second) = (&parts[0], &parts[1]);
        let empty = |(key, range_end): &(Bytes, Bytes)| Compare {
            result: compare::CompareResult::Less as i32,
            target: compare::CompareTarget::Version as i32,
            key: key.clone(),
            range_end: range_end.clone(),
            target_union: Some(compare::TargetUnion::Version(1)),
        };
        let leaf = |over_parts: Vec<Compare>| {
            let mut done = done.clone();
            done.extend(over_parts);
            RequestOp {
                request: Some(request_op::Request::RequestTxn(
                    self.branch_on_parts(done, rest, success, failure),
                )),
            }
        };
        let nested = |txn: TxnRequest| RequestOp {
            request: Some(request_op::Request::RequestTxn(txn)),
        };
        TxnRequest {
            compare: vec![empty(first)],
            success: vec![leaf(vec![over(second)])],
            failure: vec![nested(TxnRequest {
                compare: vec![empty(second)],
                success: vec![leaf(vec![over(first)])],
                failure: vec![leaf(vec![over(first), over(second)])],
            })],
        }
    }

    /// etcd's answer to `rewrite_txn(asked)`, as the answer to `asked`.
    pub fn answer_rewritten(&self, asked: &TxnRequest, mut resp: TxnResponse) -> Result<TxnResponse, Malformed> {
        let header = resp.header;
        let inner = |r: TxnResponse| match r.responses.into_iter().next().and_then(|op| op.response) {
            Some(response_op::Response::ResponseTxn(t)) => Ok(t),
            _ => Err(Malformed("a Txn branch without its Txn")),
        };
        for _ in asked
            .compare
            .iter()
            .filter(|c| self.parts_of_compare(c).is_some_and(|p| p.len() == 2))
        {
            let first_empty = resp.succeeded;
            resp = inner(resp)?;
            if !first_empty {
                resp = inner(resp)?;
            }
        }
        resp.header = header;
        let ops = if resp.succeeded { &asked.success } else { &asked.failure };
        for (op, answer) in ops.iter().zip(resp.responses.iter_mut()) {
            let rewritten = match (&op.request, answer.response.take()) {
                (Some(request_op::Request::RequestDeleteRange(_)), Some(response_op::Response::ResponseTxn(parts))) => {
                    response_op::Response::ResponseDeleteRange(merge_deletes(parts))
                }
                (Some(request_op::Request::RequestTxn(t)), Some(response_op::Response::ResponseTxn(r))) => {
                    response_op::Response::ResponseTxn(self.answer_rewritten(t, r)?)
                }
                (_, other) => {
                    answer.response = other;
                    continue;
                }
            };
            answer.response = Some(rewritten);
        }
        Ok(resp)
    }

    /// Removes reserved keys from the reads of a Txn's answer, nested ones included. The
    /// count drops by as many keys as were removed, which is exact for reads without a
    /// limit; a limited or count-only read inside a Txn over the reserved keys counts them.
    pub fn hide_in_txn(&self, resp: &mut TxnResponse) {
        for op in &mut resp.responses {
            match &mut op.response {
                Some(response_op::Response::ResponseRange(r)) => {
                    let before = r.kvs.len();
                    r.kvs.retain(|kv| !self.is_reserved(&kv.key));
                    r.count -= (before - r.kvs.len()) as i64;
                }
                Some(response_op::Response::ResponseTxn(t)) => self.hide_in_txn(t),
                _ => {}
            }
        }
    }
}

/// The answer to a delete split by `Scope::split_delete`, as one delete.
pub fn merge_deletes(parts: TxnResponse) -> DeleteRangeResponse {
    let mut merged = DeleteRangeResponse {
        header: parts.header,
        ..Default::default()
    };
    for part in parts.responses {
        if let Some(response_op::Response::ResponseDeleteRange(d)) = part.response {
            merged.deleted += d.deleted;
            merged.prev_kvs.extend(d.prev_kvs);
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_stay_inside_the_tenant_prefix() {
        let s = scope();
        assert!(s.in_tenant(b"/t/a", b""));
        assert!(s.in_tenant(b"/t/", b"/t0"));
        assert!(s.in_tenant(b"/t/a", b"/t/b"));
        assert!(!s.in_tenant(b"/u/a", b""));
        assert!(!s.in_tenant(b"/t/", b"/u"), "a range that runs past the prefix");
        assert!(!s.in_tenant(b"/t/", b"\0"), "to the end of the key space");
        assert!(!s.in_tenant(b"/", b"/t0"), "a range that starts before the prefix");
        assert!(s.in_tenant(KUBE_COMPACT_KEY, b""), "kube-apiserver's compactor key");
        assert!(Scope::new(b"").in_tenant(b"\0", b"\0"), "no prefix: everything");
    }
    use crate::proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};

    fn scope() -> Scope {
        Scope::new(b"/t/")
    }

    #[test]
    fn ranges_that_include_reserved_keys_are_recognised() {
        let s = scope();
        assert!(s.is_reserved(b"/t/\x00cutover/fence"));
        assert!(!s.is_reserved(b"/t/registry/pods/a"));
        assert!(s.touches_reserved(b"/t/", b"/t0"), "the whole tenant prefix");
        assert!(s.touches_reserved(b"\x00", b"\x00"), "everything");
        assert!(s.touches_reserved(b"/t/\x00cutover/fence", b""), "the fence key itself");
        assert!(!s.touches_reserved(b"/t/registry/", b"/t/registry0"));
        assert!(
            !s.touches_reserved(b"/t/a", b"\x00"),
            "from a key after the reserved range"
        );
        assert!(!s.touches_reserved(b"/s/", b"/t/"), "ends where the prefix starts");
    }

    #[test]
    fn the_reserved_part_of_a_range_is_their_intersection() {
        let s = scope();
        assert_eq!(
            s.reserved_part(b"/t/", b"/t0"),
            (
                Bytes::from_static(b"/t/\x00cutover/"),
                Bytes::from_static(b"/t/\x00cutover0")
            )
        );
        assert_eq!(
            s.reserved_part(b"/t/\x00cutover/f", b"\x00"),
            (
                Bytes::from_static(b"/t/\x00cutover/f"),
                Bytes::from_static(b"/t/\x00cutover0")
            )
        );
    }

    #[test]
    fn ranges_over_the_whole_prefix_are_split_around_the_reserved_keys() {
        let s = scope();
        assert_eq!(
            s.around_reserved(b"/t/", b"/t0"),
            Some(vec![
                (Bytes::from_static(b"/t/"), Bytes::from_static(b"/t/\x00cutover/")),
                (Bytes::from_static(b"/t/\x00cutover0"), Bytes::from_static(b"/t0")),
            ])
        );
        assert_eq!(s.around_reserved(b"/t/a", b"/t/b"), None, "off the reserved keys");
        assert_eq!(
            s.around_reserved(b"/t/\x00cutover/fence", b""),
            None,
            "one reserved key"
        );
        assert_eq!(
            s.around_reserved(b"/t/\x00cutover/", b"/t/\x00cutover0"),
            None,
            "inside them"
        );
    }

    #[test]
    fn deletes_over_the_whole_prefix_in_a_txn_are_split_and_answered_as_one() {
        use crate::proto::etcdserverpb::ResponseOp;
        use crate::proto::mvccpb::KeyValue;
        let s = scope();
        let wide = |k: &'static [u8], e: &'static [u8]| RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: Bytes::from_static(k),
                range_end: Bytes::from_static(e),
                prev_kv: true,
            })),
        };
        let asked = TxnRequest {
            success: vec![
                wide(b"/t/a", b"/t/b"),
                RequestOp {
                    request: Some(request_op::Request::RequestTxn(TxnRequest {
                        failure: vec![wide(b"/t/", b"/t0")],
                        ..Default::default()
                    })),
                },
            ],
            failure: vec![wide(b"/t/", b"/t0")],
            ..Default::default()
        };
        assert!(!s.txn_allowed(&asked));
        assert!(s.txn_needs_rewrite(&asked));
        let sent = s.rewrite_txn(&asked);
        assert!(s.txn_allowed(&sent), "the rewritten Txn keeps off the reserved keys");
        assert_eq!(
            sent.success[0], asked.success[0],
            "a delete off the reserved keys is left alone"
        );
        let Some(request_op::Request::RequestTxn(split)) = &sent.failure[0].request else {
            panic!("not split: {:?}", sent.failure[0]);
        };
        assert!(split.compare.is_empty());
        assert_eq!(split.success.len(), 2);
        // An answer as etcd gives it to the rewritten Txn, failure branch taken.
        let deleted = |n: i64, key: &'static [u8]| ResponseOp {
            response: Some(response_op::Response::ResponseDeleteRange(DeleteRangeResponse {
                deleted: n,
                prev_kvs: vec![KeyValue {
                    key: Bytes::from_static(key),
                    ..Default::default()
                }],
                ..Default::default()
            })),
        };
        let resp = TxnResponse {
            succeeded: false,
            responses: vec![ResponseOp {
                response: Some(response_op::Response::ResponseTxn(TxnResponse {
                    succeeded: true,
                    responses: vec![deleted(1, b"/t/"), deleted(1, b"/t/x")],
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        let resp = s.answer_rewritten(&asked, resp).unwrap();
        let Some(response_op::Response::ResponseDeleteRange(d)) = &resp.responses[0].response else {
            panic!("not merged: {resp:?}");
        };
        assert_eq!(d.deleted, 2);
        assert_eq!(d.prev_kvs.len(), 2);
    }

    #[test]
    fn a_compare_over_the_whole_prefix_branches_on_which_parts_hold_keys() {
        use crate::proto::etcdserverpb::ResponseOp;
        let s = scope();
        let wide = Compare {
            key: Bytes::from_static(b"/t/"),
            range_end: Bytes::from_static(b"/t0"),
            result: compare::CompareResult::Greater as i32,
            target: compare::CompareTarget::Version as i32,
            target_union: Some(compare::TargetUnion::Version(0)),
        };
        let single = Compare {
            key: Bytes::from_static(b"/t/a"),
            ..wide.clone()
        };
        let read = |k: &'static [u8]| RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: Bytes::from_static(k),
                ..Default::default()
            })),
        };
        let asked = TxnRequest {
            compare: vec![single.clone(), wide.clone()],
            success: vec![read(b"/t/yes")],
            failure: vec![read(b"/t/no")],
        };
        assert!(!s.txn_allowed(&asked));
        assert!(s.txn_needs_rewrite(&asked));
        let sent = s.rewrite_txn(&asked);
        assert!(s.txn_allowed(&sent));
        // Branch one: the part before cutover's keys is empty.
        let first_empty = &sent.compare[0];
        assert_eq!(
            (&first_empty.key[..], &first_empty.range_end[..]),
            (&b"/t/"[..], &b"/t/\x00cutover/"[..])
        );
        assert_eq!(first_empty.target_union, Some(compare::TargetUnion::Version(1)));
        let leaf = |op: &RequestOp| match &op.request {
            Some(request_op::Request::RequestTxn(t)) => t.clone(),
            other => panic!("not a Txn: {other:?}"),
        };
        let only_second = leaf(&sent.success[0]);
        assert_eq!(only_second.compare.len(), 2, "the other compare stays in every leaf");
        assert_eq!(only_second.compare[0], single);
        assert_eq!(&only_second.compare[1].key[..], b"/t/\x00cutover0");
        assert_eq!(only_second.success, asked.success);
        let second_check = leaf(&sent.failure[0]);
        let only_first = leaf(&second_check.success[0]);
        assert_eq!(&only_first.compare[1].range_end[..], b"/t/\x00cutover/");
        let both = leaf(&second_check.failure[0]);
        assert_eq!(both.compare.len(), 3);
        // etcd's answer by way of the failure branches, the client's Txn failed: the
        // client gets its own Txn's answer.
        let answer = |succeeded: bool, responses: Vec<ResponseOp>| TxnResponse {
            succeeded,
            responses,
            ..Default::default()
        };
        let txn_op = |t: TxnResponse| ResponseOp {
            response: Some(response_op::Response::ResponseTxn(t)),
        };
        let range_op = |n: i64| ResponseOp {
            response: Some(response_op::Response::ResponseRange(
                crate::proto::etcdserverpb::RangeResponse {
                    count: n,
                    ..Default::default()
                },
            )),
        };
        let client_level = answer(false, vec![range_op(7)]);
        let resp = answer(false, vec![txn_op(answer(false, vec![txn_op(client_level.clone())]))]);
        assert_eq!(s.answer_rewritten(&asked, resp).unwrap(), client_level);
        let resp = answer(true, vec![txn_op(client_level.clone())]);
        assert_eq!(s.answer_rewritten(&asked, resp).unwrap(), client_level);
        assert!(s.answer_rewritten(&asked, answer(true, vec![range_op(1)])).is_err());
    }

    #[test]
    fn txns_may_not_touch_reserved_keys_anywhere() {
        let s = scope();
        let put = |k: &'static [u8]| RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: Bytes::from_static(k),
                ..Default::default()
            })),
        };
        let ok = TxnRequest {
            success: vec![put(b"/t/registry/x")],
            ..Default::default()
        };
        assert!(s.txn_allowed(&ok));
        let nested = TxnRequest {
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestTxn(TxnRequest {
                    success: vec![put(b"/t/\x00cutover/fence")],
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        assert!(!s.txn_allowed(&nested));
        let wide_delete = TxnRequest {
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                    key: Bytes::from_static(b"/t/"),
                    range_end: Bytes::from_static(b"/t0"),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        assert!(!s.txn_allowed(&wide_delete));
        let wide_read = TxnRequest {
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: Bytes::from_static(b"/t/"),
                    range_end: Bytes::from_static(b"/t0"),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        assert!(s.txn_allowed(&wide_read), "reads may span them; answers are filtered");
        let cmp = TxnRequest {
            compare: vec![Compare {
                key: Bytes::from_static(b"/t/\x00cutover/fence"),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(!s.txn_allowed(&cmp));
    }
}
