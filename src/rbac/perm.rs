//! Key permissions as etcd evaluates them: every permission of every role a user holds
//! becomes an interval of keys, and a request is allowed when the union of those intervals
//! covers the whole range it asks for.

use bytes::Bytes;

use crate::proto::authpb::permission::Type as PermType;
use crate::proto::authpb::Permission;

/// The end of an interval: a key (exclusive), or past every key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum End {
    Key(Bytes),
    Unbounded,
}

/// `[begin, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    pub begin: Bytes,
    pub end: End,
}

/// The key after `key` in etcd's order: the smallest key greater than it.
fn successor(key: &[u8]) -> Bytes {
    let mut k = key.to_vec();
    k.push(0);
    Bytes::from(k)
}

impl Interval {
    /// A permission's interval: an empty `range_end` is the one key, `"\0"` is every key
    /// from `key` on.
    pub fn of_permission(key: &[u8], range_end: &[u8]) -> Interval {
        let end = match range_end {
            [] => End::Key(successor(key)),
            [0] => End::Unbounded,
            end => End::Key(Bytes::copy_from_slice(end)),
        };
        Interval {
            begin: Bytes::copy_from_slice(key),
            end,
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        self.begin[..] <= *key
            && match &self.end {
                End::Key(e) => key < &e[..],
                End::Unbounded => true,
            }
    }
}

/// Whether a permission may be granted: a key, and an end after it (or none, or `"\0"`).
pub fn valid_permission(key: &[u8], range_end: &[u8]) -> bool {
    !key.is_empty() && (range_end.is_empty() || range_end == [0] || key < range_end)
}

/// Whether a permission of type `granted` allows `wanted` (READ or WRITE).
pub fn allows(granted: i32, wanted: PermType) -> bool {
    granted == PermType::Readwrite as i32 || granted == wanted as i32
}

/// The permissions of one kind a user holds, as intervals sorted by their start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    intervals: Vec<Interval>,
}

impl Grants {
    pub fn new<'a>(perms: impl IntoIterator<Item = &'a Permission>, wanted: PermType) -> Grants {
        let mut intervals: Vec<Interval> = perms
            .into_iter()
            .filter(|p| allows(p.perm_type, wanted))
            .map(|p| Interval::of_permission(&p.key, &p.range_end))
            .collect();
        intervals.sort_by(|a, b| a.begin.cmp(&b.begin).then_with(|| a.end.cmp(&b.end)));
        Grants { intervals }
    }

    /// The intervals, sorted by their start.
    pub fn intervals(&self) -> &[Interval] {
        &self.intervals
    }

    /// Whether the request's keys, `[key, range_end)` as etcd reads a request's range
    /// (empty: the one key; `"\0"`: every key from `key` on), are all covered.
    pub fn covers(&self, key: &[u8], range_end: &[u8]) -> bool {
        // `None`: past every key.
        let end: Option<&[u8]> = match range_end {
            [] => return self.intervals.iter().any(|i| i.contains(key)),
            [0] => None,
            // An empty range: etcd looks only at the intervals holding its first key.
            end if end <= key => return self.intervals.iter().any(|i| i.contains(key)),
            end => Some(end),
        };
        // Walk the intervals in order of their start, extending what is covered from `key`
        // until the request's end is reached or a gap shows (borrowed: checked on every
        // request of a gateway's caller).
        let mut covered_to: Option<&[u8]> = Some(key);
        for i in &self.intervals {
            let Some(reached) = covered_to else { break };
            if i.begin[..] > *reached {
                break;
            }
            match &i.end {
                End::Unbounded => covered_to = None,
                End::Key(e) if e[..] > *reached => covered_to = Some(e),
                End::Key(_) => {}
            }
        }
        match (covered_to, end) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(reached), Some(end)) => reached >= end,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(t: PermType, key: &str, end: &str) -> Permission {
        Permission {
            perm_type: t as i32,
            key: Bytes::copy_from_slice(key.as_bytes()),
            range_end: Bytes::copy_from_slice(end.as_bytes()),
        }
    }

    #[test]
    fn a_prefix_permission_covers_its_prefix_and_nothing_past_it() {
        let g = Grants::new(&[perm(PermType::Readwrite, "/s/", "/s0")], PermType::Read);
        assert!(g.covers(b"/s/a", b""));
        assert!(g.covers(b"/s/", b"/s0"));
        assert!(g.covers(b"/s/a", b"/s/b"));
        assert!(!g.covers(b"/s/", b"/s1"));
        assert!(!g.covers(b"/s", b"/s0"));
        assert!(!g.covers(b"/s0", b""));
        assert!(!g.covers(b"/s/", b"\0"));
        assert!(!g.covers(b"/t/a", b""));
    }

    #[test]
    fn permissions_of_several_roles_join_without_gaps_only() {
        let perms = [
            perm(PermType::Read, "a", "c"),
            perm(PermType::Readwrite, "c", "e"),
            perm(PermType::Write, "e", "g"),
            perm(PermType::Read, "k", "\0"),
        ];
        let read = Grants::new(&perms, PermType::Read);
        assert!(read.covers(b"a", b"e"));
        assert!(!read.covers(b"a", b"f"), "e..g is write only");
        assert!(read.covers(b"k", b"\0"));
        assert!(read.covers(b"z", b""));
        assert!(!read.covers(b"j", b"\0"));
        let write = Grants::new(&perms, PermType::Write);
        assert!(write.covers(b"c", b"g"));
        assert!(!write.covers(b"b", b"d"));
        assert!(write.covers(b"f", b""));
    }

    #[test]
    fn a_single_key_permission_is_that_key_only() {
        let g = Grants::new(&[perm(PermType::Write, "k", "")], PermType::Write);
        assert!(g.covers(b"k", b""));
        assert!(g.covers(b"k", b"k\0"));
        assert!(!g.covers(b"k", b"l"));
        assert!(!g.covers(b"k\0", b""));
        assert!(Grants::new(&[perm(PermType::Write, "k", "")], PermType::Read)
            .intervals
            .is_empty());
    }

    #[test]
    fn an_empty_request_range_is_judged_by_its_key() {
        let g = Grants::new(&[perm(PermType::Read, "m", "n")], PermType::Read);
        assert!(g.covers(b"m", b"a"));
        assert!(!g.covers(b"z", b"a"));
    }

    #[test]
    fn what_may_be_granted() {
        assert!(valid_permission(b"a", b""));
        assert!(valid_permission(b"a", b"\0"));
        assert!(valid_permission(b"a", b"b"));
        assert!(!valid_permission(b"", b"b"));
        assert!(!valid_permission(b"b", b"a"));
        assert!(!valid_permission(b"b", b"b"));
    }
}
