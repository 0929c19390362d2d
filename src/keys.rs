//! Key ranges in etcd's terms (a half-open range [start, end), where an empty end means
//! the start key alone and `\0` means every key from start on), and where cutover keeps
//! its own keys inside a tenant's range.

use bytes::Bytes;

/// The half-open key range [start, end) of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Bytes,
    /// Empty with a non-empty start means "this key only"; `\0` means "to the end".
    pub end: Bytes,
}

impl KeyRange {
    /// Every key under `prefix`; an empty prefix is the whole key space.
    pub fn prefix(prefix: &[u8]) -> KeyRange {
        if prefix.is_empty() {
            return KeyRange {
                start: Bytes::from_static(b"\0"),
                end: Bytes::from_static(b"\0"),
            };
        }
        KeyRange {
            start: Bytes::copy_from_slice(prefix),
            end: prefix_end(prefix),
        }
    }
}

/// The first key after every key that starts with `prefix` (etcd's convention).
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    // All 0xff: to the end of the key space.
    Bytes::from_static(b"\0")
}

/// cutover's own keys sit under the tenant prefix, after this marker: inside the key space
/// the tenant's credentials may touch, and sorted before every ordinary key (a NUL byte).
pub const RESERVED_MARKER: &[u8] = b"\x00cutover/";

/// The reserved key prefix for a tenant prefix.
pub fn reserved_prefix(tenant_prefix: &[u8]) -> Bytes {
    let mut b = bytes::BytesMut::with_capacity(tenant_prefix.len() + RESERVED_MARKER.len());
    b.extend_from_slice(tenant_prefix);
    b.extend_from_slice(RESERVED_MARKER);
    b.freeze()
}

/// Whether a request's range `[key, end)` (etcd's reading: empty `end`, the one key;
/// `"\0"`, every key from `key` on) shares a key with `[lo, hi)` (`hi` a real key).
pub fn overlaps(key: &[u8], end: &[u8], lo: &[u8], hi: &[u8]) -> bool {
    match end {
        [] => key >= lo && key < hi,
        [0] => hi > key,
        _ => key < hi && end > lo,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_follow_etcd() {
        assert_eq!(&prefix_end(b"/a/")[..], b"/a0");
        assert_eq!(&prefix_end(b"a\xff")[..], b"b");
        assert_eq!(&prefix_end(b"\xff\xff")[..], b"\0");
        assert_eq!(
            KeyRange::prefix(b""),
            KeyRange {
                start: Bytes::from_static(b"\0"),
                end: Bytes::from_static(b"\0")
            }
        );
    }
}
