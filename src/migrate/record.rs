//! The committed translation, persisted in the target under cutover's reserved prefix, so
//! that any proxy that starts (or restarts) on the target serves the same revisions.
//!
//! Layout under `<prefix>\0cutover/translation/`:
//! - `keys/<n>`: the bulk of the key map K, written before the fence: a `PackedKeyMap`
//!   (route::keymap's compact form, proto/cutover/record.proto) cut into chunks well under
//!   etcd's request limit;
//! - `keys/delta/<n>`: the keys that changed after that, written while fenced, as
//!   `KeyMapChunk` entries (a removal is an entry whose target create_revision is 0);
//! - `params`: S, L, the chunk count and the record's format as JSON, written last: its
//!   mod_revision is T, which makes T greater than every copied change and every chunk,
//!   as the translation requires.
//!
//! - `pruned` and `pruned-keys/<generation>/<n>`: K rewritten without the entries pruning
//!   dropped (see migrate::prune), packed, in place of `keys/`: `pruned` names the
//!   generation, its chunk count and the T it belongs to, and is written last, in the Txn
//!   that removes what it replaces.
//!
//! Older formats are still read, never written: 1 (params without `format`) held
//! hand-encoded varint records in every chunk, 2 held `KeyMapChunk` entries in every chunk.

use std::collections::HashMap;

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::error::ProxyError;
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::{PutRequest, RangeRequest};
use crate::proto::record::{KeyEntry, KeyMapChunk};
use crate::route::fence::reserved_prefix;
use crate::route::keymap::KeyMap;
use crate::route::revision::{CopiedKey, Translation};
use crate::upstream::client;
use crate::upstream::{own_request, Datastore, Retry};

/// Bytes of K per chunk: far below etcd's default 1.5 MiB request limit.
const CHUNK_BYTES: usize = 512 * 1024;

/// The record's format written now: the bulk packed, the delta as entries.
const FORMAT: u32 = 3;
/// `KeyMapChunk` entries: every chunk of a record of format 2, and the delta's chunks
/// (whose `format` field says so) of format 3.
const FORMAT_ENTRIES: u32 = 2;
/// Hand-encoded varint records, before the protobuf chunks (read only).
const FORMAT_VARINT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("target: {0}")]
    Datastore(#[from] ProxyError),
    #[error("the translation record is damaged: {0}")]
    Damaged(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Params {
    s: i64,
    l: i64,
    /// The number of chunks of a record of format 1. Records of format 2 name theirs
    /// `chunkCount` instead, so that a build that knows only format 1 (and would take
    /// protobuf chunks for its varint records) finds the record damaged, never misreads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chunks: Option<u32>,
    #[serde(default, rename = "chunkCount", skip_serializing_if = "Option::is_none")]
    chunk_count: Option<u32>,
    /// Leases that got a new ID on the target: (source ID, target ID).
    #[serde(default)]
    leases: Vec<(i64, i64)>,
    /// How the chunks are encoded; absent in records of format 1.
    #[serde(default = "varint_format")]
    format: u32,
}

fn varint_format() -> u32 {
    FORMAT_VARINT
}

fn record_prefix(tenant_prefix: &[u8]) -> Bytes {
    let mut b = BytesMut::from(&reserved_prefix(tenant_prefix)[..]);
    b.extend_from_slice(b"translation/");
    b.freeze()
}

/// K as chunks of entries, in key order: how a record of format 2 held it.
#[cfg(test)]
fn encode_keys(keys: &HashMap<Bytes, CopiedKey>) -> Vec<Bytes> {
    let mut sorted: Vec<_> = keys.iter().map(|(k, v)| (k, Some(*v))).collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    encode_entries(sorted)
}

/// Entries of K in chunks; `None` is a key that left K.
fn encode_entries<'a>(entries: impl IntoIterator<Item = (&'a Bytes, Option<CopiedKey>)>) -> Vec<Bytes> {
    let mut chunks = Vec::new();
    let mut cur = KeyMapChunk {
        format: FORMAT_ENTRIES,
        entries: Vec::new(),
    };
    let mut size = 0;
    for (key, k) in entries {
        let entry = match k {
            Some(k) => KeyEntry {
                key: key.clone(),
                target_create: k.target_create,
                target_mod: k.target_mod,
                target_version: k.target_version,
                source_create: k.source_create,
                source_mod: k.source_mod,
                source_version: k.source_version,
            },
            None => KeyEntry {
                key: key.clone(),
                ..Default::default()
            },
        };
        size += entry.encoded_len() + 4;
        cur.entries.push(entry);
        if size >= CHUNK_BYTES {
            chunks.push(Bytes::from(cur.encode_to_vec()));
            cur.entries.clear();
            size = 0;
        }
    }
    if !cur.entries.is_empty() {
        chunks.push(Bytes::from(cur.encode_to_vec()));
    }
    chunks
}

/// One chunk of entries (`KeyMapChunk`), in order: a key's revisions, or `None` for a key
/// that left K.
fn decode_entries(chunk: Bytes) -> Result<Vec<(Bytes, Option<CopiedKey>)>, RecordError> {
    let chunk = KeyMapChunk::decode(chunk).map_err(|e| RecordError::Damaged(e.to_string()))?;
    if chunk.format != FORMAT_ENTRIES {
        return Err(RecordError::Damaged(format!(
            "a chunk of format {} where entries (format {FORMAT_ENTRIES}) were expected",
            chunk.format
        )));
    }
    Ok(chunk
        .entries
        .into_iter()
        .map(|e| {
            let v = [
                e.target_create,
                e.target_mod,
                e.target_version,
                e.source_create,
                e.source_mod,
                e.source_version,
            ];
            (e.key, entry(v))
        })
        .collect())
}

/// Applies one chunk of K of a record of format 1 or 2 to `into`.
fn decode_keys(chunk: Bytes, format: u32, into: &mut HashMap<Bytes, CopiedKey>) -> Result<(), RecordError> {
    match format {
        FORMAT_ENTRIES => {
            for (key, v) in decode_entries(chunk)? {
                apply(into, key, v);
            }
            Ok(())
        }
        FORMAT_VARINT => decode_varint_chunk(chunk, into),
        other => Err(unknown_format(other)),
    }
}

fn unknown_format(format: u32) -> RecordError {
    RecordError::Damaged(format!(
        "the key map is in format {format}, which this cutover does not know (a newer one wrote it)"
    ))
}

/// An entry's six revisions; a target create_revision of 0 (a copy never has one) says
/// the key left K.
fn entry(v: [i64; 6]) -> Option<CopiedKey> {
    (v[0] != 0).then_some(CopiedKey {
        target_create: v[0],
        target_mod: v[1],
        target_version: v[2],
        source_create: v[3],
        source_mod: v[4],
        source_version: v[5],
    })
}

fn apply(into: &mut HashMap<Bytes, CopiedKey>, key: Bytes, v: Option<CopiedKey>) {
    match v {
        Some(v) => into.insert(key, v),
        None => into.remove(&key),
    };
}

/// A chunk of format 1: (varint key length, key, six zigzag varints) records.
fn decode_varint_chunk(chunk: Bytes, into: &mut HashMap<Bytes, CopiedKey>) -> Result<(), RecordError> {
    let varint = |buf: &mut Bytes| prost::encoding::decode_varint(buf).map_err(|e| RecordError::Damaged(e.to_string()));
    let mut buf = chunk;
    while buf.has_remaining() {
        let len = varint(&mut buf)? as usize;
        if len > buf.remaining() {
            return Err(RecordError::Damaged("a key runs past the end of its chunk".into()));
        }
        let key = buf.split_to(len);
        let mut v = [0i64; 6];
        for slot in &mut v {
            let z = varint(&mut buf)?;
            *slot = ((z >> 1) as i64) ^ -((z & 1) as i64);
        }
        apply(into, key, entry(v));
    }
    Ok(())
}

async fn put(target: &Datastore, key: Bytes, value: Bytes) -> Result<i64, ProxyError> {
    let req = PutRequest {
        key,
        value,
        ..Default::default()
    };
    target
        .unary(Retry::IfNotSent, |ch, token| {
            let r = own_request(req.clone(), token);
            async move { client!(KvClient, ch).put(r).await }
        })
        .await
        .map(|r| r.into_inner().header.map_or(0, |h| h.revision))
}

/// Writes K and then the parameters; returns T, the revision of the parameters' write.
pub async fn persist(
    target: &Datastore,
    tenant_prefix: &[u8],
    s: i64,
    l: i64,
    keys: &HashMap<Bytes, CopiedKey>,
    leases: &HashMap<i64, i64>,
) -> Result<i64, RecordError> {
    let chunks = persist_keys(target, tenant_prefix, &KeyMap::from_map(keys)).await?;
    persist_final(target, tenant_prefix, s, l, chunks, &[], keys, leases).await
}

/// Writes K as it is now, packed (before the fence: the bulk of the record). Returns the
/// number of chunks written.
pub async fn persist_keys(target: &Datastore, tenant_prefix: &[u8], keys: &KeyMap) -> Result<u32, RecordError> {
    let base = record_prefix(tenant_prefix);
    let pieces = cut(Bytes::from(keys.encode_base()), CHUNK_BYTES);
    for (i, piece) in pieces.iter().enumerate() {
        let mut key = BytesMut::from(&base[..]);
        key.extend_from_slice(format!("keys/{i:08}").as_bytes());
        put(target, key.freeze(), piece.clone()).await?;
    }
    Ok(pieces.len() as u32)
}

/// `bytes` in pieces of at most `size` bytes.
fn cut(bytes: Bytes, size: usize) -> Vec<Bytes> {
    bytes.chunks(size).map(|piece| bytes.slice_ref(piece)).collect()
}

/// Completes the record while fenced: the entries of the keys `changed` since
/// [`persist_keys`] (as K has them now, or removed), then the parameters, whose revision
/// is T. Returns T.
#[allow(clippy::too_many_arguments)]
pub async fn persist_final(
    target: &Datastore,
    tenant_prefix: &[u8],
    s: i64,
    l: i64,
    base_chunks: u32,
    changed: &[Bytes],
    keys: &HashMap<Bytes, CopiedKey>,
    leases: &HashMap<i64, i64>,
) -> Result<i64, RecordError> {
    let base = record_prefix(tenant_prefix);
    // Sorted after the bulk chunks ("delta/" > "0000..."), so read back after them.
    let delta = encode_entries(changed.iter().map(|k| (k, keys.get(k).copied())));
    for (i, chunk) in delta.iter().enumerate() {
        let mut key = BytesMut::from(&base[..]);
        key.extend_from_slice(format!("keys/delta/{i:08}").as_bytes());
        put(target, key.freeze(), chunk.clone()).await?;
    }
    let params = Params {
        s,
        l,
        chunks: None,
        chunk_count: Some(base_chunks + delta.len() as u32),
        leases: leases.iter().filter(|(s, t)| s != t).map(|(s, t)| (*s, *t)).collect(),
        format: FORMAT,
    };
    let json = serde_json::to_vec(&params).map_err(|e| RecordError::Damaged(e.to_string()))?;
    let mut key = BytesMut::from(&base[..]);
    key.extend_from_slice(b"params");
    Ok(put(target, key.freeze(), Bytes::from(json)).await?)
}

/// What `pruned` holds: the generation of K that replaces `keys/` for the record of T.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PrunedKeys {
    t: i64,
    generation: String,
    #[serde(rename = "chunkCount")]
    chunk_count: u32,
}

fn record_key(base: &[u8], rest: &str) -> Bytes {
    let mut key = BytesMut::from(base);
    key.extend_from_slice(rest.as_bytes());
    key.freeze()
}

/// Replaces the record's K by `keys`, the same K after pruning, if the record is still the
/// one of T = `t` and no other replica rewrote it meanwhile. Returns whether this call's
/// K is the record's now.
pub async fn rewrite_keys(
    target: &Datastore,
    tenant_prefix: &[u8],
    t: i64,
    keys: &KeyMap,
) -> Result<bool, RecordError> {
    use crate::proto::etcdserverpb::{compare, request_op, Compare, DeleteRangeRequest, RequestOp, TxnRequest};
    let base = record_prefix(tenant_prefix);
    let params_key = record_key(&base, "params");
    let pruned_key = record_key(&base, "pruned");
    let read = |key: Bytes| async move {
        let r = super::ops::range(
            target,
            RangeRequest {
                key,
                ..Default::default()
            },
        )
        .await?;
        Ok::<_, ProxyError>(r.kvs.into_iter().next())
    };
    if read(params_key.clone()).await?.map(|kv| kv.mod_revision) != Some(t) {
        return Ok(false);
    }
    let seen = read(pruned_key.clone()).await?.map_or(0, |kv| kv.mod_revision);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let generation = format!("{:016x}", now ^ (u64::from(std::process::id()) << 40));
    let all = record_key(&base, "pruned-keys/");
    let dir = record_key(&base, &format!("pruned-keys/{generation}/"));
    let pieces = cut(Bytes::from(keys.encode_base()), CHUNK_BYTES);
    for (i, piece) in pieces.iter().enumerate() {
        put(target, record_key(&dir, &format!("{i:08}")), piece.clone()).await?;
    }
    let value = PrunedKeys {
        t,
        generation: generation.clone(),
        chunk_count: pieces.len() as u32,
    };
    let json = serde_json::to_vec(&value).map_err(|e| RecordError::Damaged(e.to_string()))?;
    let mod_is = |key: &Bytes, rev: i64| Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key: key.clone(),
        range_end: Bytes::new(),
        target_union: Some(compare::TargetUnion::ModRevision(rev)),
    };
    let delete = |key: Bytes, range_end: Bytes| RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key,
            range_end,
            ..Default::default()
        })),
    };
    let original = record_key(&base, "keys/");
    let txn = TxnRequest {
        compare: vec![mod_is(&params_key, t), mod_is(&pruned_key, seen)],
        success: vec![
            RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: pruned_key.clone(),
                    value: Bytes::from(json),
                    ..Default::default()
                })),
            },
            delete(original.clone(), crate::keys::prefix_end(&original)),
            // Every other generation, this one's excepted.
            delete(all.clone(), dir.clone()),
            delete(crate::keys::prefix_end(&dir), crate::keys::prefix_end(&all)),
        ],
        failure: vec![],
    };
    let answered = super::ops::txn(target, txn).await;
    if matches!(&answered, Ok(r) if r.succeeded) {
        return Ok(true);
    }
    // Lost, or no answer: the record says who won (a retried Txn that had been applied
    // fails its compare, and must not take its own chunks away).
    let current = read(pruned_key).await?;
    let ours = current
        .is_some_and(|kv| serde_json::from_slice::<PrunedKeys>(&kv.value).is_ok_and(|p| p.generation == generation));
    if !ours {
        super::ops::txn(
            target,
            TxnRequest {
                success: vec![delete(dir.clone(), crate::keys::prefix_end(&dir))],
                ..Default::default()
            },
        )
        .await?;
    }
    answered?;
    Ok(ours)
}

/// Reads the translation back, if the target has one.
pub async fn load(target: &Datastore, tenant_prefix: &[u8]) -> Result<Option<Translation>, RecordError> {
    let base = record_prefix(tenant_prefix);
    let req = RangeRequest {
        key: base.clone(),
        range_end: crate::keys::prefix_end(&base),
        ..Default::default()
    };
    let resp = super::ops::range(target, req).await?;
    let params_key = [&base[..], b"params"].concat();
    let Some(params_kv) = resp.kvs.iter().find(|kv| kv.key[..] == params_key[..]) else {
        return Ok(None);
    };
    let params: Params =
        serde_json::from_slice(&params_kv.value).map_err(|e| RecordError::Damaged(format!("params: {e}")))?;
    let translation = |keys| Translation {
        s: params.s,
        t: params_kv.mod_revision,
        l: params.l,
        keys,
        leases: params.leases.iter().copied().collect(),
    };
    // K as a replica rewrote it after pruning, if it did for this record.
    let pruned_key = [&base[..], b"pruned"].concat();
    if let Some(kv) = resp.kvs.iter().find(|kv| kv.key[..] == pruned_key[..]) {
        let pruned: PrunedKeys =
            serde_json::from_slice(&kv.value).map_err(|e| RecordError::Damaged(format!("pruned: {e}")))?;
        if pruned.t == params_kv.mod_revision {
            let dir = [&base[..], format!("pruned-keys/{}/", pruned.generation).as_bytes()].concat();
            let mut packed = Vec::new();
            let mut seen = 0u32;
            for kv in resp.kvs.iter().filter(|kv| kv.key.starts_with(&dir)) {
                packed.extend_from_slice(&kv.value);
                seen += 1;
            }
            if seen != pruned.chunk_count {
                return Err(RecordError::Damaged(format!(
                    "{} chunks of the pruned key map expected, {seen} found",
                    pruned.chunk_count
                )));
            }
            let keys = KeyMap::decode_base(&packed).map_err(|e| RecordError::Damaged(e.to_string()))?;
            return Ok(Some(translation(keys)));
        }
    }
    let keys_prefix = [&base[..], b"keys/"].concat();
    let delta_prefix = [&base[..], b"keys/delta/"].concat();
    let chunks = resp.kvs.iter().filter(|kv| kv.key.starts_with(&keys_prefix));
    let seen = chunks.clone().count() as u32;
    let keys = match params.format {
        FORMAT => {
            // The bulk's pieces come first in key order ("keys/0..." < "keys/delta/").
            let mut packed = Vec::new();
            let mut delta = Vec::new();
            for kv in chunks {
                if kv.key.starts_with(&delta_prefix) {
                    delta.extend(decode_entries(kv.value.clone())?);
                } else {
                    packed.extend_from_slice(&kv.value);
                }
            }
            KeyMap::decode_base(&packed)
                .map_err(|e| RecordError::Damaged(e.to_string()))?
                .with_overlay(delta)
        }
        FORMAT_ENTRIES | FORMAT_VARINT => {
            let mut keys = HashMap::new();
            for kv in chunks {
                decode_keys(kv.value.clone(), params.format, &mut keys)?;
            }
            KeyMap::from_map(&keys)
        }
        other => return Err(unknown_format(other)),
    };
    let expected = match params.format {
        FORMAT_VARINT => params.chunks,
        _ => params.chunk_count,
    }
    .ok_or_else(|| RecordError::Damaged(format!("params of format {} without their chunk count", params.format)))?;
    if seen != expected {
        return Err(RecordError::Damaged(format!(
            "{expected} chunks of the key map expected, {seen} found"
        )));
    }
    Ok(Some(translation(keys)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> HashMap<Bytes, CopiedKey> {
        (0..n)
            .map(|i| {
                (
                    Bytes::from(format!("/registry/pods/ns/pod-{i:06}")),
                    CopiedKey {
                        target_create: 10 + i as i64,
                        target_mod: 20 + i as i64,
                        target_version: 1 + (i % 3) as i64,
                        source_create: 1_000_000 + i as i64,
                        source_mod: 2_000_000 + i as i64,
                        source_version: 500 + i as i64,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn the_key_map_round_trips_through_chunks() {
        let keys = sample(40_000);
        let chunks = encode_keys(&keys);
        assert!(chunks.len() > 1, "large maps are split");
        assert!(chunks.iter().all(|c| c.len() < CHUNK_BYTES + 1024));
        let mut back = HashMap::new();
        for c in chunks {
            decode_keys(c, FORMAT_ENTRIES, &mut back).unwrap();
        }
        assert_eq!(back, keys);
    }

    #[test]
    fn delta_entries_update_and_remove_keys() {
        let mut keys = sample(3);
        let mut back = HashMap::new();
        for c in encode_keys(&keys) {
            decode_keys(c, FORMAT_ENTRIES, &mut back).unwrap();
        }
        let gone = Bytes::from("/registry/pods/ns/pod-000001");
        let changed = Bytes::from("/registry/pods/ns/pod-000002");
        keys.remove(&gone);
        keys.get_mut(&changed).unwrap().target_mod += 5;
        let delta = [gone.clone(), changed.clone()];
        for c in encode_entries(delta.iter().map(|k| (k, keys.get(k).copied()))) {
            decode_keys(c, FORMAT_ENTRIES, &mut back).unwrap();
        }
        assert_eq!(back, keys);
    }

    #[test]
    fn damaged_chunks_are_errors_not_panics() {
        let chunk = encode_keys(&sample(3)).remove(0);
        for cut in 0..chunk.len() {
            let mut into = HashMap::new();
            let _ = decode_keys(chunk.slice(..cut), FORMAT_ENTRIES, &mut into);
            let _ = decode_keys(chunk.slice(..cut), FORMAT_VARINT, &mut into);
        }
        let mut into = HashMap::new();
        let garbage = Bytes::from_static(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff");
        assert!(decode_keys(garbage.clone(), FORMAT_ENTRIES, &mut into).is_err());
        assert!(decode_keys(garbage, FORMAT_VARINT, &mut into).is_err());
        assert!(decode_keys(Bytes::from_static(b"\x10ab"), FORMAT_VARINT, &mut into).is_err());
    }

    #[test]
    fn a_record_of_format_1_is_still_read() {
        // Params without "format", and one chunk as cutover wrote it before the protobuf
        // chunks: key length 3, "/ab", then zigzag varints 10, 20, 1, 100, 200, 3.
        let params: Params = serde_json::from_str(r#"{"s":1000,"l":0,"chunks":1}"#).unwrap();
        assert_eq!(params.format, FORMAT_VARINT);
        assert_eq!(params.chunks, Some(1));
        let chunk = Bytes::from_static(b"\x03/ab\x14\x28\x02\xc8\x01\x90\x03\x06");
        let mut keys = HashMap::new();
        decode_keys(chunk, params.format, &mut keys).unwrap();
        assert_eq!(
            keys.get(&Bytes::from_static(b"/ab")),
            Some(&CopiedKey {
                target_create: 10,
                target_mod: 20,
                target_version: 1,
                source_create: 100,
                source_mod: 200,
                source_version: 3,
            })
        );
    }

    /// What a build that knows only format 1 declares (its params, field for field): it
    /// must fail on a record of format 2 rather than read protobuf as varint records.
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct ParamsOfFormat1 {
        s: i64,
        l: i64,
        chunks: u32,
        #[serde(default)]
        leases: Vec<(i64, i64)>,
    }

    #[test]
    fn a_build_that_knows_only_format_1_finds_a_new_record_damaged() {
        let params = Params {
            s: 1000,
            l: 0,
            chunks: None,
            chunk_count: Some(3),
            leases: vec![],
            format: FORMAT,
        };
        let json = serde_json::to_vec(&params).unwrap();
        let old = serde_json::from_slice::<ParamsOfFormat1>(&json);
        assert!(old.is_err(), "an older build would read {old:?}");
        let back: Params = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, params);
    }

    #[test]
    fn a_format_this_cutover_does_not_know_is_refused() {
        let chunk = encode_keys(&sample(2)).remove(0);
        let mut into = HashMap::new();
        let err = decode_keys(chunk, 4, &mut into).unwrap_err();
        assert!(err.to_string().contains("format 4"), "{err}");
        // A chunk that says another format than its record is damaged.
        let other = Bytes::from(
            KeyMapChunk {
                format: 7,
                entries: vec![],
            }
            .encode_to_vec(),
        );
        assert!(decode_keys(other, FORMAT_ENTRIES, &mut into).is_err());
    }

    /// A build that knows formats 1 and 2 only (the one before the packed bulk) refuses a
    /// record of format 3 instead of reading the packed bytes as entries.
    #[test]
    fn a_build_that_knows_only_formats_1_and_2_refuses_format_3() {
        let packed = Bytes::from(KeyMap::from_map(&sample(100)).encode_base());
        let mut into = HashMap::new();
        // Such a build hands every chunk to its decoder with the record's format.
        let err = decode_keys(packed.clone(), FORMAT, &mut into).unwrap_err();
        assert!(err.to_string().contains("format 3"), "{err}");
        // And the packed bytes, read as entries, are damaged, never entries.
        assert!(decode_entries(packed).is_err());
    }

    /// The packed bulk cut into chunks and the delta's entries read back as the map
    /// they were made from.
    #[test]
    fn the_packed_bulk_and_the_delta_read_back_as_one_map() {
        let mut keys = sample(20_000);
        let pieces = cut(Bytes::from(KeyMap::from_map(&keys).encode_base()), 16 * 1024);
        assert!(pieces.len() > 1, "one chunk");
        let gone = Bytes::from("/registry/pods/ns/pod-000001");
        let changed = Bytes::from("/registry/pods/ns/pod-000002");
        let added = Bytes::from("/registry/pods/ns/zz-new");
        keys.remove(&gone);
        keys.get_mut(&changed).unwrap().target_mod += 5;
        keys.insert(added.clone(), keys[&changed]);
        let delta = encode_entries([&gone, &changed, &added].into_iter().map(|k| (k, keys.get(k).copied())));
        let whole: Vec<u8> = pieces.concat();
        let mut overlay = Vec::new();
        for d in delta {
            overlay.extend(decode_entries(d).unwrap());
        }
        let back = KeyMap::decode_base(&whole).unwrap().with_overlay(overlay);
        assert_eq!(back.len(), keys.len());
        for (k, v) in &keys {
            assert_eq!(back.get(k), Some(*v), "{k:?}");
        }
        assert_eq!(back.get(&gone), None);
    }
}
