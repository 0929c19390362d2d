//! etcd's answers read where they lie in the bytes that came over the wire, without
//! decoding them into messages. An answer cutover passes on unchanged (no translation
//! active, the common case) is then forwarded as a slice of what etcd sent: the key-values
//! of a Range, most of its size, are neither decoded nor encoded again.

use std::ops::Range;

use bytes::Bytes;
use prost::Message;

use crate::error::Malformed;
use crate::proto::etcdserverpb::{RangeResponse, ResponseHeader};

/// The numbers of the fields cutover looks for (proto/etcdserverpb/rpc.proto).
const HEADER: u32 = 1;
const TXN_SUCCEEDED: u32 = 2;
const TXN_RESPONSES: u32 = 3;
/// In a ResponseOp: which kind of answer it carries.
pub const OP_RANGE: u32 = 1;
pub const OP_PUT: u32 = 2;
pub const OP_DELETE_RANGE: u32 = 3;
pub const OP_TXN: u32 = 4;

const LENGTH_DELIMITED: u8 = 2;

/// One field of an encoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub number: u32,
    pub wire_type: u8,
    /// The field with its tag, in the message's bytes.
    pub whole: Range<usize>,
    /// The field's value: for a length-delimited field, its content.
    pub value: Range<usize>,
}

/// The fields of an encoded message, in the order they were written.
pub fn fields(buf: &[u8]) -> Fields<'_> {
    Fields { buf, at: 0 }
}

pub struct Fields<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Fields<'_> {
    fn varint(&mut self) -> Result<u64, Malformed> {
        let mut rest = &self.buf[self.at..];
        let before = rest.len();
        let v =
            prost::encoding::decode_varint(&mut rest).map_err(|_| Malformed("a varint of etcd's answer is cut off"))?;
        self.at += before - rest.len();
        Ok(v)
    }

    fn skip(&mut self, n: u64) -> Result<(), Malformed> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.at.checked_add(n))
            .filter(|&end| end <= self.buf.len())
            .ok_or(Malformed("a field of etcd's answer runs past its end"))?;
        self.at = end;
        Ok(())
    }

    fn next_field(&mut self) -> Result<Field, Malformed> {
        let start = self.at;
        let tag = self.varint()?;
        let number =
            u32::try_from(tag >> 3).map_err(|_| Malformed("a field number of etcd's answer is out of range"))?;
        let wire_type = (tag & 7) as u8;
        let value_start;
        match wire_type {
            0 => {
                value_start = self.at;
                self.varint()?;
            }
            1 => {
                value_start = self.at;
                self.skip(8)?;
            }
            LENGTH_DELIMITED => {
                let len = self.varint()?;
                value_start = self.at;
                self.skip(len)?;
            }
            5 => {
                value_start = self.at;
                self.skip(4)?;
            }
            _ => return Err(Malformed("etcd's answer has a field of an unknown wire type")),
        }
        Ok(Field {
            number,
            wire_type,
            whole: start..self.at,
            value: value_start..self.at,
        })
    }
}

impl Iterator for Fields<'_> {
    type Item = Result<Field, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.buf.len() {
            return None;
        }
        let field = self.next_field();
        if field.is_err() {
            // Nothing after a broken field can be read.
            self.at = self.buf.len();
        }
        Some(field)
    }
}

/// A message as etcd encoded it, in at most two pieces of the bytes it came in, to be
/// sent on as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encoded {
    pub head: Bytes,
    pub body: Bytes,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The message, decoded after all (for tests, and answers that must change).
    pub fn decode<M: Message + Default>(&self) -> Result<M, Malformed> {
        let mut whole = Vec::with_capacity(self.len());
        whole.extend_from_slice(&self.head);
        whole.extend_from_slice(&self.body);
        M::decode(&whole[..]).map_err(|_| Malformed("an answer cutover passed on does not decode"))
    }
}

/// A TxnResponse, read only as far as its header, its outcome and its first and last
/// response ops.
#[derive(Debug, Clone)]
pub struct TxnAnswer {
    bytes: Bytes,
    header: Option<Field>,
    pub succeeded: bool,
    first: Option<Field>,
    last: Option<Field>,
    pub ops: usize,
}

impl TxnAnswer {
    pub fn parse(bytes: Bytes) -> Result<TxnAnswer, Malformed> {
        let mut answer = TxnAnswer {
            bytes: Bytes::new(),
            header: None,
            succeeded: false,
            first: None,
            last: None,
            ops: 0,
        };
        for field in fields(&bytes) {
            let field = field?;
            match (field.number, field.wire_type) {
                (HEADER, LENGTH_DELIMITED) => {
                    if answer.header.is_some() {
                        return Err(Malformed("etcd's Txn answer has two headers"));
                    }
                    answer.header = Some(field);
                }
                (TXN_SUCCEEDED, 0) => answer.succeeded = bytes[field.value.clone()].iter().any(|&b| b != 0),
                (TXN_RESPONSES, LENGTH_DELIMITED) => {
                    answer.ops += 1;
                    if answer.first.is_none() {
                        answer.first = Some(field.clone());
                    }
                    answer.last = Some(field);
                }
                // A field of a later etcd: dropped, as decoding would drop it.
                _ => {}
            }
        }
        answer.bytes = bytes;
        Ok(answer)
    }

    /// The outer header's revision (0 without a header).
    pub fn revision(&self) -> Result<i64, Malformed> {
        match &self.header {
            Some(h) => ResponseHeader::decode(&self.bytes[h.value.clone()])
                .map(|h| h.revision)
                .map_err(|_| Malformed("the header of etcd's Txn answer does not decode")),
            None => Ok(0),
        }
    }

    /// The first response op: its kind (`OP_RANGE`, ...) and where its answer lies.
    pub fn first_op(&self) -> Result<Op, Malformed> {
        self.op(self.first.as_ref())
    }

    /// The last response op.
    pub fn last_op(&self) -> Result<Op, Malformed> {
        self.op(self.last.as_ref())
    }

    fn op(&self, field: Option<&Field>) -> Result<Op, Malformed> {
        let field = field.ok_or(Malformed("etcd's Txn answer has no response op"))?;
        let content = &self.bytes[field.value.clone()];
        let mut found = None;
        for inner in fields(content) {
            let inner = inner?;
            if inner.wire_type != LENGTH_DELIMITED || found.is_some() {
                return Err(Malformed("a response op of etcd's Txn answer is not one answer"));
            }
            let base = field.value.start;
            found = Some(Op {
                kind: inner.number,
                within: base + inner.value.start..base + inner.value.end,
            });
        }
        found.ok_or(Malformed("a response op of etcd's Txn answer is empty"))
    }

    /// The answer of `op` as the client's own, with the outer header in place of the
    /// inner one, as etcd puts it on the bare request. `None` when the inner answer's
    /// header is not its first field (etcd always writes it first): the caller decodes.
    pub fn inner_with_outer_header(&self, op: &Op) -> Result<Option<Encoded>, Malformed> {
        let inner = self.bytes.slice(op.within.clone());
        let mut body_from = 0;
        for (i, field) in fields(&inner).enumerate() {
            let field = field?;
            if field.number == HEADER {
                if i != 0 {
                    return Ok(None);
                }
                body_from = field.whole.end;
            }
        }
        let head = match &self.header {
            Some(h) => self.bytes.slice(h.whole.clone()),
            None => Bytes::new(),
        };
        Ok(Some(Encoded {
            head,
            body: inner.slice(body_from..),
        }))
    }

    /// The whole answer, as it came.
    pub fn whole(&self) -> Encoded {
        Encoded {
            head: self.bytes.clone(),
            body: Bytes::new(),
        }
    }

    /// The whole answer without its last response op (the fence read a guarded read-only
    /// Txn carries at the end of its branch).
    pub fn without_last_op(&self) -> Result<Encoded, Malformed> {
        let last = self
            .last
            .as_ref()
            .ok_or(Malformed("etcd's Txn answer has no response op"))?;
        Ok(Encoded {
            head: self.bytes.slice(..last.whole.start),
            body: self.bytes.slice(last.whole.end..),
        })
    }

    /// The value of the key a Range op read (the fence key): empty when it does not exist.
    pub fn read_value(&self, op: &Op) -> Result<Bytes, Malformed> {
        if op.kind != OP_RANGE {
            return Err(Malformed("the fence read is missing from the guarded answer"));
        }
        let range = RangeResponse::decode(self.bytes.slice(op.within.clone()))
            .map_err(|_| Malformed("the fence read of etcd's answer does not decode"))?;
        Ok(range.kvs.into_iter().next().map(|kv| kv.value).unwrap_or_default())
    }
}

/// Where one response op's answer lies in a [`TxnAnswer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub kind: u32,
    within: Range<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{response_op, PutResponse, ResponseOp, TxnResponse};
    use crate::proto::mvccpb::KeyValue;

    fn header(rev: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: 11,
            member_id: 22,
            revision: rev,
            raft_term: 3,
        })
    }

    fn range(keys: &[&str], value: &str) -> RangeResponse {
        RangeResponse {
            header: header(1),
            kvs: keys
                .iter()
                .map(|k| KeyValue {
                    key: Bytes::copy_from_slice(k.as_bytes()),
                    value: Bytes::copy_from_slice(value.as_bytes()),
                    create_revision: 5,
                    mod_revision: 9,
                    version: 2,
                    lease: 0,
                })
                .collect(),
            more: true,
            count: 40,
        }
    }

    fn op(r: response_op::Response) -> ResponseOp {
        ResponseOp { response: Some(r) }
    }

    fn encoded(m: &impl Message) -> Bytes {
        Bytes::from(m.encode_to_vec())
    }

    #[test]
    fn a_guarded_range_answer_is_passed_on_as_the_bare_range_answer_would_be() {
        let inner = range(&["/a", "/b"], "v");
        let fence = range(&[], "");
        let txn = TxnResponse {
            header: header(77),
            succeeded: true,
            responses: vec![
                op(response_op::Response::ResponseRange(inner.clone())),
                op(response_op::Response::ResponseRange(fence)),
            ],
        };
        let answer = TxnAnswer::parse(encoded(&txn)).unwrap();
        assert!(answer.succeeded);
        assert_eq!(answer.ops, 2);
        assert_eq!(answer.revision().unwrap(), 77);
        let first = answer.first_op().unwrap();
        assert_eq!(first.kind, OP_RANGE);
        let passed = answer.inner_with_outer_header(&first).unwrap().unwrap();
        let want = RangeResponse {
            header: header(77),
            ..inner
        };
        assert_eq!(passed.decode::<RangeResponse>().unwrap(), want);
        // Byte for byte what encoding the expected answer gives.
        let mut whole = passed.head.to_vec();
        whole.extend_from_slice(&passed.body);
        assert_eq!(whole, want.encode_to_vec());
        assert_eq!(answer.read_value(&answer.last_op().unwrap()).unwrap(), Bytes::new());
    }

    #[test]
    fn the_fence_holder_is_read_from_the_last_op() {
        let txn = TxnResponse {
            header: header(5),
            succeeded: false,
            responses: vec![op(response_op::Response::ResponseRange(range(&["/f"], "held")))],
        };
        let answer = TxnAnswer::parse(encoded(&txn)).unwrap();
        assert!(!answer.succeeded);
        assert_eq!(&answer.read_value(&answer.last_op().unwrap()).unwrap()[..], b"held");
        let put = TxnResponse {
            responses: vec![op(response_op::Response::ResponsePut(PutResponse::default()))],
            ..txn
        };
        let answer = TxnAnswer::parse(encoded(&put)).unwrap();
        assert!(answer.read_value(&answer.last_op().unwrap()).is_err());
    }

    #[test]
    fn a_read_only_txn_answer_loses_only_its_last_op() {
        let ops = vec![
            op(response_op::Response::ResponseRange(range(&["/x"], "1"))),
            op(response_op::Response::ResponseRange(range(&["/y", "/z"], "2"))),
        ];
        let mut with_fence = ops.clone();
        with_fence.push(op(response_op::Response::ResponseRange(range(&[], ""))));
        let txn = TxnResponse {
            header: header(8),
            succeeded: true,
            responses: with_fence,
        };
        let answer = TxnAnswer::parse(encoded(&txn)).unwrap();
        let passed = answer.without_last_op().unwrap();
        let want = TxnResponse { responses: ops, ..txn };
        assert_eq!(passed.decode::<TxnResponse>().unwrap(), want);
    }

    #[test]
    fn an_inner_answer_without_a_header_gets_the_outer_one_and_a_late_header_is_left_to_decoding() {
        let no_header = PutResponse {
            header: None,
            prev_kv: Some(KeyValue {
                key: Bytes::from_static(b"/k"),
                ..Default::default()
            }),
        };
        let txn = TxnResponse {
            header: header(9),
            succeeded: true,
            responses: vec![op(response_op::Response::ResponsePut(no_header.clone()))],
        };
        let answer = TxnAnswer::parse(encoded(&txn)).unwrap();
        let first = answer.first_op().unwrap();
        assert_eq!(first.kind, OP_PUT);
        let passed = answer.inner_with_outer_header(&first).unwrap().unwrap();
        assert_eq!(
            passed.decode::<PutResponse>().unwrap(),
            PutResponse {
                header: header(9),
                ..no_header
            }
        );

        // A header written after another field: legal protobuf, never etcd's order.
        let mut late = Vec::new();
        prost::encoding::bytes::encode(2, &Bytes::from(KeyValue::default().encode_to_vec()), &mut late);
        prost::encoding::message::encode(1, &header(1).unwrap(), &mut late);
        let mut op_bytes = Vec::new();
        prost::encoding::bytes::encode(OP_PUT, &Bytes::from(late), &mut op_bytes);
        let mut txn_bytes = Vec::new();
        prost::encoding::bytes::encode(TXN_RESPONSES, &Bytes::from(op_bytes), &mut txn_bytes);
        let answer = TxnAnswer::parse(Bytes::from(txn_bytes)).unwrap();
        assert_eq!(
            answer.inner_with_outer_header(&answer.first_op().unwrap()).unwrap(),
            None
        );
    }

    #[test]
    fn broken_answers_are_malformed_never_a_panic() {
        let good = encoded(&TxnResponse {
            header: header(3),
            succeeded: true,
            responses: vec![op(response_op::Response::ResponseRange(range(&["/a"], "v")))],
        });
        // Every prefix of a good answer, and a few bytes of nonsense.
        for cut in 0..good.len() {
            let _ = TxnAnswer::parse(good.slice(..cut)).and_then(|a| {
                let op = a.first_op()?;
                a.inner_with_outer_header(&op)?;
                a.read_value(&op)
            });
        }
        for junk in [&[0xffu8; 12][..], &[0x0b], &[0x1a, 0x05, 0x0a], &[0x08, 0x80]] {
            assert!(TxnAnswer::parse(Bytes::copy_from_slice(junk))
                .and_then(|a| a.first_op())
                .is_err());
        }
        assert!(TxnAnswer::parse(Bytes::new()).unwrap().first_op().is_err());
    }
}
