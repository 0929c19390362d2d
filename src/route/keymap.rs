//! The key map K in a compact, immutable form: what a committed migration remembers of each
//! copied key, for as long as the tenant lives, in every replica.
//!
//! Keys share long prefixes (`/registry/<resource>/<namespace>/<name>`), so they go into a
//! finite-state transducer (fst) that maps each key to its row; a row's six revision
//! fields sit in bit-packed columns, each as an offset above the column's least value,
//! stored as the difference that is usually small (a key copied once has mod = create).
//! A few bytes per key instead of a hash map's hundreds.
//!
//! The map is built once, from keys in order. What changes later comes as an overlay: the
//! keys a migration changed after the bulk was persisted (see `migrate::record`), and
//! nothing else; pruning (`Contents::without`) builds a new map.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use fst::{IntoStreamer, Streamer};
use prost::Message;
use sucds::int_vectors::{Access, CompactVector};

use crate::proto::record::{PackedColumn, PackedKeyMap};

/// What the copier last wrote for one key, and what the source had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopiedKey {
    /// Target create_revision of the key's copied incarnation.
    pub target_create: i64,
    /// Target mod_revision of the copier's last write of the key.
    pub target_mod: i64,
    /// Target version right after that write.
    pub target_version: i64,
    pub source_create: i64,
    pub source_mod: i64,
    pub source_version: i64,
}

/// The packed form's format number (the translation record's format 3).
pub const PACKED_FORMAT: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum KeyMapError {
    #[error("the key map's keys are not in strictly increasing order: {0}")]
    Order(String),
    #[error("the packed key map is damaged: {0}")]
    Damaged(String),
}

/// What a [`KeyMap`] holds at one time.
#[derive(Clone, Default)]
struct Contents {
    base: Arc<Packed>,
    /// Later entries: `None` removes the key from the base.
    overlay: Arc<HashMap<Bytes, Option<CopiedKey>>>,
    len: usize,
}

impl std::fmt::Debug for Contents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMap")
            .field("len", &self.len)
            .field("overlay", &self.overlay.len())
            .finish()
    }
}

/// Which entries of a [`KeyMap`] the datastore still holds: a bit per row of the bulk,
/// and the overlay's keys.
pub struct Liveness {
    base: Vec<u64>,
    overlay: std::collections::HashSet<Bytes>,
}

impl Liveness {
    pub fn count(&self) -> usize {
        self.base.iter().map(|w| w.count_ones() as usize).sum::<usize>() + self.overlay.len()
    }
}

/// The immutable bulk.
#[derive(Default)]
struct Packed {
    index: fst::Map<Vec<u8>>,
    columns: [Column; 6],
}

/// One field of every row.
#[derive(Default)]
struct Column {
    least: i64,
    /// `None` when every row holds `least`.
    offsets: Option<CompactVector>,
}

impl Column {
    fn get(&self, row: usize) -> i64 {
        match &self.offsets {
            None => self.least,
            Some(cv) => self.least.wrapping_add(cv.access(row).unwrap_or(0) as i64),
        }
    }

    fn width(&self) -> usize {
        self.offsets.as_ref().map_or(0, |cv| cv.width())
    }

    fn heap_bytes(&self) -> usize {
        self.offsets.as_ref().map_or(0, |cv| cv.len() * cv.width() / 8 + 8)
    }
}

/// A row's fields as stored: the differences that are usually small.
fn fields(k: &CopiedKey) -> [i64; 6] {
    [
        k.target_create,
        k.target_mod.wrapping_sub(k.target_create),
        k.target_version,
        k.source_create,
        k.source_mod.wrapping_sub(k.source_create),
        k.source_version,
    ]
}

fn from_fields(f: [i64; 6]) -> CopiedKey {
    CopiedKey {
        target_create: f[0],
        target_mod: f[0].wrapping_add(f[1]),
        target_version: f[2],
        source_create: f[3],
        source_mod: f[3].wrapping_add(f[4]),
        source_version: f[5],
    }
}

impl Packed {
    fn get(&self, key: &[u8]) -> Option<CopiedKey> {
        let row = self.index.get(key)? as usize;
        Some(self.row(row))
    }

    fn row(&self, row: usize) -> CopiedKey {
        let c = &self.columns;
        from_fields([
            c[0].get(row),
            c[1].get(row),
            c[2].get(row),
            c[3].get(row),
            c[4].get(row),
            c[5].get(row),
        ])
    }

    /// From the entries `source` gives in increasing key order, to the callback it is
    /// handed; it is called twice (the index and each column's bounds, then the columns),
    /// so that nothing of the size of the map is held but the map itself.
    fn build(source: impl Fn(&mut dyn FnMut(&[u8], &CopiedKey))) -> Result<(Packed, usize), KeyMapError> {
        let mut builder = fst::MapBuilder::memory();
        let mut failed = None;
        let mut rows = 0usize;
        let mut least = [i64::MAX; 6];
        let mut most = [i64::MIN; 6];
        source(&mut |key, k| {
            if failed.is_none() {
                failed = builder.insert(key, rows as u64).err();
            }
            rows += 1;
            for (f, v) in fields(k).into_iter().enumerate() {
                least[f] = least[f].min(v);
                most[f] = most[f].max(v);
            }
        });
        if let Some(e) = failed {
            return Err(KeyMapError::Order(e.to_string()));
        }
        let index = builder.into_map();
        // A column whose rows all hold one value is that value alone.
        let mut offsets: [Option<CompactVector>; 6] = Default::default();
        for f in 0..6 {
            let span = most[f].wrapping_sub(least[f]) as u64;
            if rows > 0 && span > 0 {
                let width = (64 - span.leading_zeros()) as usize;
                // The width is within 1..=64 here.
                offsets[f] = CompactVector::with_capacity(rows, width).ok();
            }
        }
        source(&mut |_, k| {
            for (f, v) in fields(k).into_iter().enumerate() {
                if let Some(cv) = &mut offsets[f] {
                    // Every offset fits the width chosen from the bounds.
                    let _ = cv.push_int(v.wrapping_sub(least[f]) as u64);
                }
            }
        });
        let mut columns: [Column; 6] = Default::default();
        for (f, (column, offsets)) in columns.iter_mut().zip(offsets).enumerate() {
            *column = Column {
                least: if rows == 0 { 0 } else { least[f] },
                offsets,
            };
        }
        Ok((Packed { index, columns }, rows))
    }

    fn heap_bytes(&self) -> usize {
        self.index.as_fst().as_bytes().len() + self.columns.iter().map(Column::heap_bytes).sum::<usize>()
    }
}

impl Contents {
    /// From entries in strictly increasing key order.
    pub fn from_sorted<'a>(entries: impl IntoIterator<Item = (&'a [u8], CopiedKey)>) -> Result<Contents, KeyMapError> {
        let entries: Vec<(&[u8], CopiedKey)> = entries.into_iter().collect();
        let (base, len) = Packed::build(|f| {
            for (k, v) in &entries {
                f(k, v);
            }
        })?;
        Ok(Contents {
            len,
            base: Arc::new(base),
            overlay: Default::default(),
        })
    }

    /// From a hash map (a migration's working K).
    pub fn from_map(keys: &HashMap<Bytes, CopiedKey>) -> Contents {
        let mut entries: Vec<(&[u8], CopiedKey)> = keys.iter().map(|(k, v)| (&k[..], *v)).collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        // Sorted keys of a map are distinct, so the build cannot fail on order.
        Self::from_sorted(entries).unwrap_or_default()
    }

    /// This map with later entries on top (`None`: the key left K).
    pub fn with_overlay(&self, changes: impl IntoIterator<Item = (Bytes, Option<CopiedKey>)>) -> Contents {
        let mut overlay = (*self.overlay).clone();
        overlay.extend(changes);
        // A base key in the overlay is replaced or removed; the overlay's entries are counted.
        let in_base = overlay.keys().filter(|k| self.base.index.contains_key(k)).count();
        let present = overlay.values().filter(|v| v.is_some()).count();
        Contents {
            base: self.base.clone(),
            len: self.base.index.len() - in_base + present,
            overlay: Arc::new(overlay),
        }
    }

    pub fn get(&self, key: &[u8]) -> Option<CopiedKey> {
        if !self.overlay.is_empty() {
            if let Some(o) = self.overlay.get(key) {
                return *o;
            }
        }
        self.base.get(key)
    }

    /// The entries of `keys`, given in increasing order (a Range's answer): one walk over
    /// that stretch of the index instead of a lookup from the root per key, which keeps a
    /// large answer's translation cheap. Keys out of order are looked up one by one.
    pub fn get_sorted(&self, keys: &[&[u8]]) -> Vec<Option<CopiedKey>> {
        let (Some(first), Some(last)) = (keys.first(), keys.last()) else {
            return Vec::new();
        };
        if keys.len() < 4 || !keys.windows(2).all(|w| w[0] < w[1]) {
            return keys.iter().map(|k| self.get(k)).collect();
        }
        let mut out = Vec::with_capacity(keys.len());
        // Entries the answer does not hold (keys deleted since the copy) are walked over
        // too; past this budget the rest are looked up one by one.
        let mut budget = 4 * keys.len() + 64;
        let mut stream = self.base.index.range().ge(first).le(last).into_stream();
        // The entry the walk is at (its key copied into a buffer kept across steps).
        let mut at_key: Vec<u8> = Vec::new();
        let mut step = |key: &mut Vec<u8>| {
            stream.next().map(|(k, row)| {
                key.clear();
                key.extend_from_slice(k);
                row
            })
        };
        let mut at_row = step(&mut at_key);
        for key in keys {
            if !self.overlay.is_empty() {
                if let Some(o) = self.overlay.get(*key) {
                    out.push(*o);
                    continue;
                }
            }
            while at_row.is_some() && at_key.as_slice() < *key && budget > 0 {
                budget -= 1;
                at_row = step(&mut at_key);
            }
            out.push(match at_row {
                Some(row) if at_key.as_slice() == *key => Some(self.base.row(row as usize)),
                // Past the key (or past the stretch's end): K does not hold it.
                _ if budget > 0 => None,
                _ => self.base.get(key),
            });
        }
        out
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every entry, in key order.
    pub fn for_each(&self, mut f: impl FnMut(&[u8], CopiedKey)) {
        self.for_each_row(|k, v, _| f(k, v));
    }

    /// Every entry, in key order, with its row in the bulk (`None`: from the overlay).
    fn for_each_row(&self, mut f: impl FnMut(&[u8], CopiedKey, Option<usize>)) {
        let mut added: Vec<(&Bytes, CopiedKey)> = self.overlay.iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect();
        added.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut added = added.into_iter().peekable();
        let mut stream = self.base.index.stream();
        while let Some((key, row)) = stream.next() {
            while let Some((k, v)) = added.next_if(|(k, _)| &k[..] <= key) {
                f(k, v, None);
            }
            if !self.overlay.contains_key(key) {
                f(key, self.base.row(row as usize), Some(row as usize));
            }
        }
        for (k, v) in added {
            f(k, v, None);
        }
    }

    /// The entries `keep` keeps, rebuilt compact (the overlay merged in).
    fn rebuilt(&self, keep: impl Fn(&[u8], &CopiedKey, Option<usize>) -> bool) -> Contents {
        let built = Packed::build(|f| {
            self.for_each_row(|k, v, row| {
                if keep(k, &v, row) {
                    f(k, &v);
                }
            })
        });
        // The entries come in key order from a map, so the build cannot fail on order.
        let (base, len) = built.unwrap_or_default();
        Contents {
            len,
            base: Arc::new(base),
            overlay: Default::default(),
        }
    }

    /// The map without the keys `gone` says are gone.
    pub fn without(&self, gone: impl Fn(&[u8], &CopiedKey) -> bool) -> Contents {
        self.rebuilt(|k, v, _| !gone(k, v))
    }

    /// A record of which keys are still alive, all dead to begin with (see
    /// [`Contents::mark_alive`]).
    pub fn liveness(&self) -> Liveness {
        Liveness {
            base: vec![0; self.base.index.len().div_ceil(64)],
            overlay: Default::default(),
        }
    }

    /// Records that the datastore holds `key` created at `target_create`: if that is the
    /// key's copied incarnation, its entry stays. Returns whether it was.
    pub fn mark_alive(&self, live: &mut Liveness, key: &[u8], target_create: i64) -> bool {
        if let Some(o) = self.overlay.get(key) {
            let alive = o.is_some_and(|k| k.target_create == target_create);
            if alive {
                live.overlay.insert(Bytes::copy_from_slice(key));
            }
            return alive;
        }
        let Some(row) = self.base.index.get(key) else {
            return false;
        };
        let row = row as usize;
        let alive = self.base.columns[0].get(row) == target_create;
        if alive {
            live.base[row / 64] |= 1 << (row % 64);
        }
        alive
    }

    /// The map with only the keys marked alive, rebuilt compact.
    pub fn alive_only(&self, live: &Liveness) -> Contents {
        self.rebuilt(|k, _, row| match row {
            Some(row) => live.base[row / 64] & (1 << (row % 64)) != 0,
            None => live.overlay.contains(k),
        })
    }

    /// Bytes held on the heap (the index and the columns; the overlay roughly).
    pub fn heap_bytes(&self) -> usize {
        self.base.heap_bytes() + self.overlay.keys().map(|k| k.len() + 80).sum::<usize>()
    }

    /// The base, packed for the translation record (the overlay is persisted apart).
    pub fn encode_base(&self) -> Vec<u8> {
        let rows = self.base.index.len();
        let columns = self
            .base
            .columns
            .iter()
            .map(|c| PackedColumn {
                least: c.least,
                width: c.width() as u32,
                bits: match &c.offsets {
                    None => Bytes::new(),
                    Some(cv) => Bytes::from(pack_bits(cv.iter(), cv.width(), rows)),
                },
            })
            .collect();
        PackedKeyMap {
            format: PACKED_FORMAT,
            rows: rows as u64,
            index: Bytes::copy_from_slice(self.base.index.as_fst().as_bytes()),
            columns,
        }
        .encode_to_vec()
    }

    /// A map from [`Contents::encode_base`]'s bytes, checked as far as a lookup relies on.
    pub fn decode_base(bytes: &[u8]) -> Result<Contents, KeyMapError> {
        let damaged = |e: String| KeyMapError::Damaged(e);
        let packed = PackedKeyMap::decode(bytes).map_err(|e| damaged(e.to_string()))?;
        if packed.format != PACKED_FORMAT {
            return Err(damaged(format!(
                "format {} where {PACKED_FORMAT} was expected",
                packed.format
            )));
        }
        let index = fst::Map::new(packed.index.to_vec()).map_err(|e| damaged(e.to_string()))?;
        let rows = packed.rows as usize;
        if index.len() != rows {
            return Err(damaged(format!("{} keys for {rows} rows", index.len())));
        }
        // Every row number the index holds must be a row (they are 0..rows in key order).
        let mut stream = index.stream();
        let mut expected = 0u64;
        while let Some((_, row)) = stream.next() {
            if row != expected {
                return Err(damaged(format!("key number {expected} points at row {row}")));
            }
            expected += 1;
        }
        if packed.columns.len() != 6 {
            return Err(damaged(format!(
                "{} columns where 6 were expected",
                packed.columns.len()
            )));
        }
        let mut columns: [Column; 6] = Default::default();
        for (slot, c) in columns.iter_mut().zip(packed.columns) {
            let width = c.width as usize;
            *slot = if width == 0 {
                Column {
                    least: c.least,
                    offsets: None,
                }
            } else {
                if width > 64 || c.bits.len() < (rows * width).div_ceil(8) {
                    return Err(damaged(format!("a column of width {width} has {} bytes", c.bits.len())));
                }
                let values = (0..rows).map(|row| read_bits(&c.bits, row * width, width));
                Column {
                    least: c.least,
                    offsets: Some(compact(values, width).map_err(|e| damaged(e.to_string()))?),
                }
            };
        }
        Ok(Contents {
            len: rows,
            base: Arc::new(Packed { index, columns }),
            overlay: Default::default(),
        })
    }
}

/// A packed vector of `values`, each below 2^`width`.
fn compact(values: impl ExactSizeIterator<Item = u64>, width: usize) -> sucds::Result<CompactVector> {
    let mut cv = CompactVector::with_capacity(values.len(), width)?;
    cv.extend(values)?;
    Ok(cv)
}

/// `values` of `width` bits each, little-endian, one after the other.
fn pack_bits(values: impl Iterator<Item = u64>, width: usize, rows: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity((rows * width).div_ceil(8));
    let mut acc: u128 = 0;
    let mut held = 0usize;
    for v in values {
        acc |= (v as u128) << held;
        held += width;
        while held >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            held -= 8;
        }
    }
    if held > 0 {
        out.push(acc as u8);
    }
    out
}

/// The `width` bits at bit `pos` of a little-endian bit string.
fn read_bits(bytes: &[u8], pos: usize, width: usize) -> u64 {
    let start = pos / 8;
    let mut window = [0u8; 16];
    let end = (start + 16).min(bytes.len());
    window[..end - start].copy_from_slice(&bytes[start..end]);
    let v = (u128::from_le_bytes(window) >> (pos % 8)) as u64;
    if width == 64 {
        v
    } else {
        v & ((1u64 << width) - 1)
    }
}

/// K: key -> [`CopiedKey`]. A shared handle: every clone of a translation sees the same
/// map, so that pruning ([`KeyMap::replace_if`]) reaches the translations that open
/// streams hold too, and the memory of what it dropped goes back at once. Pruning never
/// changes an answer, so the contents may change under a reader between two lookups.
#[derive(Clone, Default)]
pub struct KeyMap {
    shared: Arc<arc_swap::ArcSwap<Contents>>,
}

impl std::fmt::Debug for KeyMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.shared.load().fmt(f)
    }
}

/// The key map's contents at one time, for a pass of pruning.
pub struct Frozen(Arc<Contents>);

impl KeyMap {
    fn new(contents: Contents) -> KeyMap {
        KeyMap {
            shared: Arc::new(arc_swap::ArcSwap::from_pointee(contents)),
        }
    }

    /// From entries in strictly increasing key order.
    pub fn from_sorted<'a>(entries: impl IntoIterator<Item = (&'a [u8], CopiedKey)>) -> Result<KeyMap, KeyMapError> {
        Contents::from_sorted(entries).map(KeyMap::new)
    }

    /// From a hash map (a migration's working K).
    pub fn from_map(keys: &HashMap<Bytes, CopiedKey>) -> KeyMap {
        KeyMap::new(Contents::from_map(keys))
    }

    /// A new map: this one with later entries on top (`None`: the key left K).
    pub fn with_overlay(&self, changes: impl IntoIterator<Item = (Bytes, Option<CopiedKey>)>) -> KeyMap {
        KeyMap::new(self.shared.load().with_overlay(changes))
    }

    pub fn get(&self, key: &[u8]) -> Option<CopiedKey> {
        self.shared.load().get(key)
    }

    /// See [`Contents::get_sorted`]: the entries of keys given in increasing order.
    pub fn get_sorted(&self, keys: &[&[u8]]) -> Vec<Option<CopiedKey>> {
        self.shared.load().get_sorted(keys)
    }

    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    pub fn len(&self) -> usize {
        self.shared.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry, in key order.
    pub fn for_each(&self, f: impl FnMut(&[u8], CopiedKey)) {
        self.shared.load().for_each(f)
    }

    /// A new map without the keys `gone` says are gone.
    pub fn without(&self, gone: impl Fn(&[u8], &CopiedKey) -> bool) -> KeyMap {
        KeyMap::new(self.shared.load().without(gone))
    }

    pub fn heap_bytes(&self) -> usize {
        self.shared.load().heap_bytes()
    }

    /// The bulk, packed for the translation record (the overlay is persisted apart).
    pub fn encode_base(&self) -> Vec<u8> {
        self.shared.load().encode_base()
    }

    /// A map from [`KeyMap::encode_base`]'s bytes.
    pub fn decode_base(bytes: &[u8]) -> Result<KeyMap, KeyMapError> {
        Contents::decode_base(bytes).map(KeyMap::new)
    }

    /// The contents now, for pruning them.
    pub fn frozen(&self) -> Frozen {
        Frozen(self.shared.load_full())
    }

    /// Gives this map (every clone of it) the contents of `with`, if it still has those
    /// of `was`.
    pub fn replace_if(&self, was: &Frozen, with: &KeyMap) -> bool {
        let prev = self.shared.compare_and_swap(&was.0, with.shared.load_full());
        Arc::ptr_eq(&*prev, &was.0)
    }
}

impl Frozen {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// See [`Contents::liveness`].
    pub fn liveness(&self) -> Liveness {
        self.0.liveness()
    }

    /// See [`Contents::mark_alive`].
    pub fn mark_alive(&self, live: &mut Liveness, key: &[u8], target_create: i64) -> bool {
        self.0.mark_alive(live, key, target_create)
    }

    /// A new map of the entries marked alive.
    pub fn alive_only(&self, live: &Liveness) -> KeyMap {
        KeyMap::new(self.0.alive_only(live))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kube-style keys, each copied once (mod = create), from a source loaded in Txns of
    /// 100 and a copy in batches of 128, with a few keys changed more than once.
    fn kube_like(n: usize) -> Vec<(Bytes, CopiedKey)> {
        let resources = ["pods", "configmaps", "secrets", "services", "events"];
        let mut v: Vec<(Bytes, CopiedKey)> = (0..n)
            .map(|i| {
                let key = format!(
                    "/registry/{}/ns-{:03}/object-{i:07}",
                    resources[i % resources.len()],
                    (i / 7) % 500
                );
                let changed = i % 97 == 0;
                let sc = 2 + (i / 100) as i64;
                let tc = 10 + (i / 128) as i64;
                (
                    Bytes::from(key),
                    CopiedKey {
                        target_create: tc,
                        target_mod: tc + if changed { 20_000 } else { 0 },
                        target_version: if changed { 2 } else { 1 },
                        source_create: sc,
                        source_mod: sc + if changed { 30_000 } else { 0 },
                        source_version: if changed { 5 } else { 1 },
                    },
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn as_map(v: &[(Bytes, CopiedKey)]) -> HashMap<Bytes, CopiedKey> {
        v.iter().cloned().collect()
    }

    #[test]
    fn every_key_reads_back_as_it_went_in_and_no_other_key_does() {
        let entries = kube_like(20_000);
        let map = KeyMap::from_map(&as_map(&entries));
        assert_eq!(map.len(), entries.len());
        for (k, v) in &entries {
            assert_eq!(map.get(k), Some(*v), "{k:?}");
        }
        assert_eq!(map.get(b"/registry/pods/ns-000/object-9999999"), None);
        assert_eq!(map.get(b""), None);
        assert!(!map.contains_key(b"/registry/pods"));
    }

    #[test]
    fn any_values_round_trip_even_the_extremes() {
        let odd = [
            CopiedKey {
                target_create: i64::MAX,
                target_mod: i64::MIN,
                target_version: 0,
                source_create: -1,
                source_mod: i64::MAX,
                source_version: i64::MIN,
            },
            CopiedKey {
                target_create: 1,
                target_mod: 1,
                target_version: 1,
                source_create: 1,
                source_mod: 1,
                source_version: 1,
            },
        ];
        let entries = vec![(&b"a"[..], odd[0]), (&b"b"[..], odd[1])];
        let map = KeyMap::from_sorted(entries.clone()).unwrap();
        let back = KeyMap::decode_base(&map.encode_base()).unwrap();
        for (k, v) in entries {
            assert_eq!(map.get(k), Some(v));
            assert_eq!(back.get(k), Some(v));
        }
    }

    #[test]
    fn keys_out_of_order_are_refused() {
        let k = kube_like(2)[0].1;
        let err = KeyMap::from_sorted(vec![(&b"b"[..], k), (&b"a"[..], k)]).unwrap_err();
        assert!(matches!(err, KeyMapError::Order(_)), "{err}");
        assert!(KeyMap::from_sorted(vec![(&b"a"[..], k), (&b"a"[..], k)]).is_err());
    }

    #[test]
    fn the_overlay_replaces_adds_and_removes() {
        let entries = kube_like(1_000);
        let map = KeyMap::from_map(&as_map(&entries));
        let mut changed = entries[3].1;
        changed.target_mod += 7;
        let added = CopiedKey {
            target_create: 5,
            ..changed
        };
        let over = map.with_overlay([
            (entries[3].0.clone(), Some(changed)),
            (entries[4].0.clone(), None),
            (Bytes::from_static(b"/registry/zz/new"), Some(added)),
            (Bytes::from_static(b"/registry/aa/never-there"), None),
        ]);
        assert_eq!(over.get(&entries[3].0), Some(changed));
        assert_eq!(over.get(&entries[4].0), None);
        assert_eq!(over.get(b"/registry/zz/new"), Some(added));
        assert_eq!(over.get(&entries[5].0), Some(entries[5].1));
        assert_eq!(over.len(), 1_000);
        // The base is untouched.
        assert_eq!(map.get(&entries[4].0), Some(entries[4].1));

        // In key order, as the map reads.
        let mut seen = Vec::new();
        over.for_each(|k, v| seen.push((Bytes::copy_from_slice(k), v)));
        assert_eq!(seen.len(), over.len());
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
        for (k, v) in &seen {
            assert_eq!(over.get(k), Some(*v));
        }
    }

    #[test]
    fn pruning_keeps_the_rest_and_can_empty_the_map() {
        let entries = kube_like(5_000);
        let map = KeyMap::from_map(&as_map(&entries)).with_overlay([(entries[0].0.clone(), None)]);
        let pruned = map.without(|k, _| k.starts_with(b"/registry/events/"));
        let events = entries
            .iter()
            .filter(|(k, _)| k.starts_with(b"/registry/events/"))
            .count();
        assert_eq!(
            pruned.len(),
            entries.len() - events - 1,
            "the events and the removed key are gone"
        );
        for (k, v) in &entries[1..] {
            let expect = (!k.starts_with(b"/registry/events/")).then_some(*v);
            assert_eq!(pruned.get(k), expect, "{k:?}");
        }
        let empty = pruned.without(|_, _| true);
        assert!(empty.is_empty());
        assert!(empty.heap_bytes() < 200, "{}", empty.heap_bytes());
    }

    #[test]
    fn the_packed_form_reads_back_whole_and_refuses_damage() {
        let entries = kube_like(10_000);
        let map = KeyMap::from_map(&as_map(&entries));
        let bytes = map.encode_base();
        let back = KeyMap::decode_base(&bytes).unwrap();
        assert_eq!(back.len(), map.len());
        for (k, v) in &entries {
            assert_eq!(back.get(k), Some(*v));
        }
        // Cut short, or a bit flipped in the index: refused, never misread.
        assert!(KeyMap::decode_base(&bytes[..bytes.len() / 2]).is_err());
        let mut other = PackedKeyMap::decode(&bytes[..]).unwrap();
        other.rows += 1;
        assert!(KeyMap::decode_base(&other.encode_to_vec()).is_err());
        let mut other = PackedKeyMap::decode(&bytes[..]).unwrap();
        other.columns[0].bits.truncate(3);
        assert!(KeyMap::decode_base(&other.encode_to_vec()).is_err());
        let mut other = PackedKeyMap::decode(&bytes[..]).unwrap();
        other.format = 9;
        assert!(KeyMap::decode_base(&other.encode_to_vec()).is_err());
    }

    #[test]
    fn a_sorted_batch_reads_as_key_by_key_lookups() {
        let entries = kube_like(5_000);
        let map = KeyMap::from_map(&as_map(&entries)).with_overlay([
            (entries[101].0.clone(), None),
            (entries[102].0.clone(), Some(entries[7].1)),
        ]);
        let absent = |i: usize| Bytes::from(format!("{}~absent", String::from_utf8_lossy(&entries[i].0)));
        // A stretch of the answer: present keys, keys K does not hold, overlay keys.
        let mut keys: Vec<Bytes> = Vec::new();
        for (i, (key, _)) in entries.iter().enumerate().take(700).skip(90) {
            keys.push(key.clone());
            if i % 7 == 0 {
                keys.push(absent(i));
            }
        }
        let refs: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
        let expect: Vec<Option<CopiedKey>> = refs.iter().map(|k| map.get(k)).collect();
        assert_eq!(map.get_sorted(&refs), expect);
        // Sparse answers exhaust the walk's budget, and out-of-order keys are looked up.
        let sparse: Vec<&[u8]> = (0..entries.len()).step_by(997).map(|i| &entries[i].0[..]).collect();
        let expect: Vec<_> = sparse.iter().map(|k| map.get(k)).collect();
        assert_eq!(map.get_sorted(&sparse), expect);
        let reversed: Vec<&[u8]> = sparse.iter().rev().copied().collect();
        let expect: Vec<_> = reversed.iter().map(|k| map.get(k)).collect();
        assert_eq!(map.get_sorted(&reversed), expect);
        assert!(map.get_sorted(&[]).is_empty());
    }

    /// Only the incarnation K describes keeps an entry alive: a key seen with another
    /// create_revision (deleted and written again) or not seen at all goes.
    #[test]
    fn only_the_copied_incarnation_keeps_its_entry() {
        let entries = kube_like(3_000);
        let mut added = entries[10].1;
        added.target_create += 1;
        let map = KeyMap::from_map(&as_map(&entries)).with_overlay([
            (Bytes::from_static(b"/registry/zz/new"), Some(added)),
            (entries[0].0.clone(), None),
        ]);
        let frozen = map.frozen();
        let mut live = frozen.liveness();
        let mut expect = Vec::new();
        for (i, (k, v)) in entries.iter().enumerate() {
            let recreated = i % 2 == 1;
            let alive = frozen.mark_alive(&mut live, k, v.target_create + i64::from(recreated));
            assert_eq!(alive, i != 0 && !recreated, "{k:?}");
            if alive {
                expect.push((k.clone(), *v));
            }
        }
        assert!(!frozen.mark_alive(&mut live, b"/registry/not/there", 12));
        assert!(frozen.mark_alive(&mut live, b"/registry/zz/new", added.target_create));
        expect.push((Bytes::from_static(b"/registry/zz/new"), added));
        assert_eq!(live.count(), expect.len());
        let pruned = frozen.alive_only(&live);
        assert_eq!(pruned.len(), expect.len());
        for (k, v) in &expect {
            assert_eq!(pruned.get(k), Some(*v));
        }
        // In place: every clone of the map sees the pruned contents, once.
        let held = map.clone();
        assert!(map.replace_if(&frozen, &pruned));
        assert_eq!(held.len(), expect.len());
        assert!(
            !map.replace_if(&frozen, &pruned),
            "a second pass on old contents changes nothing"
        );
        for (i, (k, _)) in entries.iter().enumerate() {
            if i == 0 || i % 2 == 1 {
                assert_eq!(pruned.get(k), None, "{k:?}");
            }
        }
    }

    /// The budget: at most 16 bytes per key in memory, for kube-style keys.
    #[test]
    fn a_hundred_thousand_kube_style_keys_take_under_16_bytes_each() {
        let entries = kube_like(100_000);
        let map = KeyMap::from_map(&as_map(&entries));
        let per_key = map.heap_bytes() as f64 / entries.len() as f64;
        let persisted = map.encode_base().len() as f64 / entries.len() as f64;
        println!("in memory {per_key:.1} B/key, persisted {persisted:.1} B/key");
        assert!(per_key <= 16.0, "{per_key:.1} bytes per key");
    }
}
