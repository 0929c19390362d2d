//! Verification before the commit: both sides of the tenant range must agree on every key,
//! value and lease, and on revisions through the key map K (the target holds what K says
//! the copier wrote; the source holds what K says clients saw).
//!
//! The whole range is compared once, at a consistent pair of revisions, while the catch-up
//! runs on; after that only the keys the catch-up changed are compared again, so the
//! fenced window does not grow with the size of the tenant.

use std::collections::HashMap;
use std::hash::Hasher;

use bytes::Bytes;

use super::copy;
use super::ops;
use crate::keys::KeyRange;
use crate::proto::etcdserverpb::{request_op, response_op, RangeRequest, RequestOp, TxnRequest};
use crate::proto::mvccpb::KeyValue;
use crate::route::revision::{CopiedKey, Translation};
use crate::upstream::Datastore;

const PAGE: i64 = 1000;

/// Why the two sides were not shown to agree.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{side}: {source}")]
    Datastore {
        side: &'static str,
        #[source]
        source: crate::error::ProxyError,
    },
    /// The sides differ.
    #[error("{0}")]
    Mismatch(#[from] Difference),
}

/// What differs between the two sides (keys as text, lossily).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Difference {
    #[error("{0} is on the source but not on the target")]
    OnlyOnSource(String),
    #[error("{0} is on the target but not on the source")]
    OnlyOnTarget(String),
    #[error("{0}: values differ")]
    Value(String),
    #[error("{0}: missing from the key map")]
    NotInKeyMap(String),
    /// (create, mod, version) found and expected.
    #[error("{key}: target revisions {found:?} are not the copier's {expected:?}")]
    TargetRevisions {
        key: String,
        found: (i64, i64, i64),
        expected: (i64, i64, i64),
    },
    #[error("{key}: source revisions {found:?} are not the recorded {expected:?}")]
    SourceRevisions {
        key: String,
        found: (i64, i64, i64),
        expected: (i64, i64, i64),
    },
    #[error("{key}: lease {found:x} on the target, {expected:x} expected")]
    Lease { key: String, found: i64, expected: i64 },
    #[error("{on_source} tenant keys on the source, {on_target} on the target")]
    Count { on_source: i64, on_target: i64 },
    /// A test made it up (failpoint `migrate.verify.mismatch`).
    #[error("{0}")]
    Injected(String),
}

fn on(side: &'static str) -> impl Fn(crate::error::ProxyError) -> VerifyError {
    move |source| VerifyError::Datastore { side, source }
}

/// Keys compared and a digest of what both sides agreed on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Digest {
    pub keys: u64,
    hash: u64,
}

impl Digest {
    pub fn digest_hex(&self) -> String {
        format!("{:016x}", self.hash)
    }
}

/// FNV-1a: stable across runs and machines (the digest is shown to operators).
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }
}

fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// Checks one key: the source's version (in the client's space) against the target's.
fn check(
    src: Option<&KeyValue>,
    tgt: Option<&KeyValue>,
    k: Option<&CopiedKey>,
    leases: &HashMap<i64, i64>,
) -> Result<(), Difference> {
    match (src, tgt) {
        (None, None) => Ok(()),
        (Some(s), None) => Err(Difference::OnlyOnSource(show(&s.key))),
        (None, Some(t)) => Err(Difference::OnlyOnTarget(show(&t.key))),
        (Some(s), Some(t)) => {
            let key = show(&s.key);
            if s.value != t.value {
                return Err(Difference::Value(key));
            }
            let Some(k) = k else {
                return Err(Difference::NotInKeyMap(key));
            };
            let found = (t.create_revision, t.mod_revision, t.version);
            let expected = (k.target_create, k.target_mod, k.target_version);
            if found != expected {
                return Err(Difference::TargetRevisions { key, found, expected });
            }
            let found = (s.create_revision, s.mod_revision, s.version);
            let expected = (k.source_create, k.source_mod, k.source_version);
            if found != expected {
                return Err(Difference::SourceRevisions { key, found, expected });
            }
            let expected = if s.lease == 0 {
                0
            } else {
                leases.get(&s.lease).copied().unwrap_or(s.lease)
            };
            if t.lease != expected {
                return Err(Difference::Lease {
                    key,
                    found: t.lease,
                    expected,
                });
            }
            Ok(())
        }
    }
}

fn digest_add(h: &mut Fnv, kv: &KeyValue) {
    h.write(&kv.key);
    h.write(&[0]);
    h.write(&kv.value);
    for v in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
        h.write(&v.to_le_bytes());
    }
}

/// A source key-value with the revisions clients see. The lease stays the source's own
/// ID: the copy's lease map is keyed by it.
fn client_space(view: Option<&Translation>, mut kv: KeyValue) -> KeyValue {
    if let Some(v) = view {
        let lease = kv.lease;
        crate::route::translate::kv(v, &mut kv);
        kv.lease = lease;
    }
    kv
}

/// Compares the whole tenant range: the source at `source_rev`, the target at `target_rev`.
#[allow(clippy::too_many_arguments)]
pub async fn full(
    source: &Datastore,
    target: &Datastore,
    range: &KeyRange,
    reserved: &Bytes,
    view: Option<&Translation>,
    keys: &HashMap<Bytes, CopiedKey>,
    leases: &HashMap<i64, i64>,
    source_rev: i64,
    target_rev: i64,
) -> Result<Digest, VerifyError> {
    let mut hash = Fnv(0xcbf29ce484222325);
    let mut n = 0u64;
    let mut start = range.start.clone();
    let ours = |kv: &KeyValue| !kv.key.starts_with(reserved);
    loop {
        let page = ops::range(
            source,
            RangeRequest {
                key: start.clone(),
                range_end: range.end.clone(),
                limit: PAGE,
                revision: source_rev,
                ..Default::default()
            },
        )
        .await
        .map_err(on("source"))?;
        // The target's keys in the same span of the key space.
        let span_end = match (page.more, page.kvs.last()) {
            (true, Some(last)) => {
                let mut e = last.key.to_vec();
                e.push(0);
                Bytes::from(e)
            }
            _ => range.end.clone(),
        };
        let theirs = ops::range(
            target,
            RangeRequest {
                key: start.clone(),
                range_end: span_end.clone(),
                revision: target_rev,
                ..Default::default()
            },
        )
        .await
        .map_err(on("target"))?;
        let src: Vec<KeyValue> = page
            .kvs
            .into_iter()
            .filter(ours)
            .map(|kv| client_space(view, kv))
            .collect();
        let tgt: Vec<KeyValue> = theirs.kvs.into_iter().filter(ours).collect();
        let (mut i, mut j) = (0, 0);
        while i < src.len() || j < tgt.len() {
            let (s, t) = match (src.get(i), tgt.get(j)) {
                (Some(s), Some(t)) if s.key == t.key => {
                    i += 1;
                    j += 1;
                    (Some(s), Some(t))
                }
                (Some(s), Some(t)) if s.key < t.key => {
                    i += 1;
                    (Some(s), None)
                }
                (Some(_), Some(t)) => {
                    j += 1;
                    (None, Some(t))
                }
                (Some(s), None) => {
                    i += 1;
                    (Some(s), None)
                }
                (None, t) => {
                    j += 1;
                    (None, t)
                }
            };
            let key = s.or(t).map(|kv| kv.key.clone()).unwrap_or_default();
            check(s, t, keys.get(&key), leases).map_err(VerifyError::Mismatch)?;
            if let Some(s) = s {
                digest_add(&mut hash, s);
                n += 1;
            }
        }
        if span_end == range.end {
            break;
        }
        start = span_end;
    }
    Ok(Digest { keys: n, hash: hash.0 })
}

/// Reads `keys` in batches of Range operations in one Txn each (at `revision`, 0: now).
async fn read_keys(
    ds: &Datastore,
    keys: &[Bytes],
    revision: i64,
) -> Result<HashMap<Bytes, KeyValue>, crate::error::ProxyError> {
    let mut out = HashMap::new();
    for batch in keys.chunks(copy::MAX_TXN_OPS) {
        let req = TxnRequest {
            success: batch
                .iter()
                .map(|k| RequestOp {
                    request: Some(request_op::Request::RequestRange(RangeRequest {
                        key: k.clone(),
                        revision,
                        ..Default::default()
                    })),
                })
                .collect(),
            ..Default::default()
        };
        let resp = ops::txn(ds, req).await?;
        for r in resp.responses {
            if let Some(response_op::Response::ResponseRange(x)) = r.response {
                for kv in x.kvs {
                    out.insert(kv.key.clone(), kv);
                }
            }
        }
    }
    Ok(out)
}

/// Compares `keys`: the source at `at`, the target as it is now (the catch-up has applied
/// everything up to `at` and is stopped or only past it for other keys).
pub async fn keys(
    source: &Datastore,
    target: &Datastore,
    view: Option<&Translation>,
    k: &HashMap<Bytes, CopiedKey>,
    leases: &HashMap<i64, i64>,
    keys: &[Bytes],
    at: i64,
) -> Result<(), VerifyError> {
    if keys.is_empty() {
        return Ok(());
    }
    let src = read_keys(source, keys, at).await.map_err(on("source"))?;
    let tgt = read_keys(target, keys, 0).await.map_err(on("target"))?;
    for key in keys {
        let s = src.get(key).cloned().map(|kv| client_space(view, kv));
        check(s.as_ref(), tgt.get(key), k.get(key), leases).map_err(VerifyError::Mismatch)?;
    }
    Ok(())
}

/// The same number of tenant keys on both sides: the source at `at`, the target now (the
/// catch-up is stopped there).
pub async fn counts(
    source: &Datastore,
    target: &Datastore,
    range: &KeyRange,
    reserved: &Bytes,
    at: i64,
) -> Result<(), VerifyError> {
    let s = ops::count_tenant(source, range, reserved, at)
        .await
        .map_err(on("source"))?;
    let t = ops::count_tenant(target, range, reserved, 0)
        .await
        .map_err(on("target"))?;
    if s != t {
        return Err(Difference::Count {
            on_source: s,
            on_target: t,
        }
        .into());
    }
    Ok(())
}
