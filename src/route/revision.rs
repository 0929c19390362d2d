//! Revision translation between the revision space clients see ("virtual") and a target
//! datastore's own, after a migration has committed. Pure logic: no I/O.
//!
//! A migration commits with parameters (see docs/ARCHITECTURE.md):
//! - `s`: the virtual revision at the commit (source revision at the commit + a gap);
//! - `t`: the target revision of the migration's metadata write, made after every copied
//!   change, so every copier write is strictly below `t`;
//! - `l`: the virtual revision of the tenant's last change before the commit;
//! - `keys` (K): per copied key, the target revisions and version of the copier's last write
//!   and the key's source create_revision, mod_revision and version.
//!
//! A key whose target create_revision is below `t` is a "copy-era" key: its revisions come
//! from K. Anything the target wrote after `t` is shifted: virtual = s + (target - t).

use std::collections::HashMap;

pub use super::keymap::{CopiedKey, KeyMap};

/// The committed translation of one migration.
#[derive(Debug, Clone, Default)]
pub struct Translation {
    pub s: i64,
    pub t: i64,
    pub l: i64,
    pub keys: KeyMap,
    /// Source lease ID -> target lease ID, only for leases whose ID was taken on the target.
    pub leases: HashMap<i64, i64>,
}

pub use crate::error::Compacted;

/// A key-value's revision fields, in one space or the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revisions {
    pub create: i64,
    pub modified: i64,
    pub version: i64,
}

/// How a compare relates the key's value to the compared one (etcd's CompareResult).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    Equal,
    Greater,
    Less,
    NotEqual,
}

impl Translation {
    /// A revision the target produced (header, event, new write) as clients see it.
    pub fn to_virtual(&self, target: i64) -> i64 {
        if target >= self.t {
            self.s + (target - self.t)
        } else {
            // Below `t` the target holds only the copy, which clients see through K; a bare
            // revision from there (e.g. a compaction point) stands for the source state
            // the copy reproduces, which the tenant last changed at `l`.
            self.l
        }
    }

    /// A revision a client asks for (Range.revision, Watch start) on the target.
    /// 0 keeps its meaning ("latest").
    pub fn to_target(&self, virt: i64) -> Result<i64, Compacted> {
        if virt <= 0 {
            Ok(virt)
        } else if virt > self.s {
            Ok(virt - self.s + self.t)
        } else if virt >= self.l {
            // The tenant did not change between `l` and `s`: the target at `t` holds it.
            Ok(self.t)
        } else {
            Err(Compacted {
                requested: virt,
                last: self.l,
            })
        }
    }

    /// The first target revision a watch starting at `virt` must see (0 = from now).
    pub fn watch_start(&self, virt: i64) -> Result<i64, Compacted> {
        if virt <= 0 {
            Ok(virt)
        } else if virt > self.s {
            Ok(virt - self.s + self.t)
        } else if virt > self.l {
            Ok(self.t + 1)
        } else {
            Err(Compacted {
                requested: virt,
                last: self.l,
            })
        }
    }

    /// Whether a target key-value can be a copied incarnation (created below `t`), so
    /// that K must be asked.
    pub fn may_be_copied(&self, target_create: i64) -> bool {
        target_create > 0 && target_create < self.t
    }

    /// A key-value's revisions as clients see them.
    pub fn kv_to_virtual(&self, key: &[u8], target: Revisions) -> Revisions {
        let entry = if self.may_be_copied(target.create) {
            self.keys.get(key)
        } else {
            None
        };
        self.kv_to_virtual_given(entry, target)
    }

    /// [`Translation::kv_to_virtual`] with the key's entry in K already looked up.
    pub fn kv_to_virtual_given(&self, entry: Option<CopiedKey>, target: Revisions) -> Revisions {
        let copied = entry.filter(|k| self.may_be_copied(target.create) && k.target_create == target.create);
        match copied {
            Some(k) => Revisions {
                create: k.source_create,
                modified: if target.modified == k.target_mod {
                    k.source_mod
                } else {
                    self.to_virtual(target.modified)
                },
                version: k.source_version + (target.version - k.target_version),
            },
            None => Revisions {
                create: self.to_virtual(target.create),
                modified: self.to_virtual(target.modified),
                version: target.version,
            },
        }
    }

    /// The compare value to send for a mod_revision compare on a copy-era key, so that
    /// the target's answer is the one the source would give. `None` means "the key is not
    /// from the copy era": use [`Translation::compare_value_new`].
    pub fn compare_mod_copied(&self, key: &[u8], virt: i64) -> Option<i64> {
        let k = self.keys.get(key)?;
        Some(if virt == 0 {
            0
        } else if virt > self.s {
            virt - self.s + self.t
        } else if virt == k.source_mod {
            k.target_mod
        } else if virt < k.source_mod {
            // Below the key's value in both spaces (target revisions start at 2).
            k.target_mod - 1
        } else {
            // Above the unchanged value, below anything written after the commit: `t`
            // itself is the metadata write, never a tenant key's revision.
            self.t
        })
    }

    /// Likewise for create_revision (constant for an incarnation). Like the mod_revision
    /// compare, it also holds for an incarnation created after the commit, whose target
    /// revisions are all above `t`: no need to know which incarnation the target has.
    pub fn compare_create_copied(&self, key: &[u8], virt: i64) -> Option<i64> {
        let k = self.keys.get(key)?;
        Some(if virt == 0 {
            0
        } else if virt > self.s {
            virt - self.s + self.t
        } else if virt == k.source_create {
            k.target_create
        } else if virt < k.source_create {
            k.target_create - 1
        } else {
            k.target_create + 1
        })
    }

    /// Likewise for version: target version moves one for one with the virtual one. This
    /// one is only right for the copied incarnation (a key created again after the commit
    /// counts versions from 1): callers branch on the incarnation first.
    pub fn compare_version_copied(&self, key: &[u8], virt: i64) -> Option<i64> {
        let k = self.keys.get(key)?;
        Some(if virt < k.source_version {
            k.target_version - 1
        } else {
            virt - k.source_version + k.target_version
        })
    }

    /// A revision compare value for a key that is not from the copy era (absent, or
    /// created after the commit): all its revisions are above `s` in virtual terms.
    pub fn compare_value_new(&self, virt: i64) -> i64 {
        if virt <= 0 {
            virt
        } else if virt > self.s {
            virt - self.s + self.t
        } else {
            self.t
        }
    }
}

/// etcd's comparison, for checking translations in tests and for proxy-side filters.
pub fn holds(actual: i64, relation: Relation, value: i64) -> bool {
    match relation {
        Relation::Equal => actual == value,
        Relation::NotEqual => actual != value,
        Relation::Greater => actual > value,
        Relation::Less => actual < value,
    }
}

/// The translation the tests of this module and of `translate` use.
/// Source: key "a" created at 5, last modified at 40, version 7; the tenant's last change
/// at 90; source at 100 when committing, gap 1000 -> s = 1100.
/// Target: "a" copied at 12, modified again by catch-up at 30 (version 2 there); the
/// metadata write at t = 50; lease 7 got ID 9 there.
#[cfg(test)]
pub(crate) fn sample() -> Translation {
    let keys = KeyMap::from_sorted([(
        &b"a"[..],
        CopiedKey {
            target_create: 12,
            target_mod: 30,
            target_version: 2,
            source_create: 5,
            source_mod: 40,
            source_version: 7,
        },
    )])
    .unwrap_or_default();
    Translation {
        s: 1100,
        t: 50,
        l: 90,
        keys,
        leases: [(7, 9)].into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translation() -> Translation {
        sample()
    }

    #[test]
    fn request_revisions_map_into_the_target_or_are_compacted() {
        let tr = translation();
        assert_eq!(tr.to_target(0), Ok(0));
        assert_eq!(tr.to_target(1105), Ok(55));
        assert_eq!(tr.to_target(1100), Ok(50));
        assert_eq!(tr.to_target(90), Ok(50));
        assert_eq!(
            tr.to_target(89),
            Err(Compacted {
                requested: 89,
                last: 90
            })
        );
        assert_eq!(tr.watch_start(91), Ok(51));
        assert_eq!(tr.watch_start(1101), Ok(51));
        assert_eq!(
            tr.watch_start(90),
            Err(Compacted {
                requested: 90,
                last: 90
            })
        );
    }

    #[test]
    fn new_target_revisions_are_shifted_above_s() {
        let tr = translation();
        assert_eq!(tr.to_virtual(51), 1101);
        assert_eq!(tr.to_virtual(tr.t), tr.s);
    }

    #[test]
    fn copied_keys_keep_their_source_revisions() {
        let tr = translation();
        let unchanged = Revisions {
            create: 12,
            modified: 30,
            version: 2,
        };
        assert_eq!(
            tr.kv_to_virtual(b"a", unchanged),
            Revisions {
                create: 5,
                modified: 40,
                version: 7
            }
        );
        let updated_after_commit = Revisions {
            create: 12,
            modified: 60,
            version: 3,
        };
        assert_eq!(
            tr.kv_to_virtual(b"a", updated_after_commit),
            Revisions {
                create: 5,
                modified: 1110,
                version: 8
            }
        );
        // Deleted and created again after the commit: a new incarnation, shifted.
        let recreated = Revisions {
            create: 70,
            modified: 70,
            version: 1,
        };
        assert_eq!(
            tr.kv_to_virtual(b"a", recreated),
            Revisions {
                create: 1120,
                modified: 1120,
                version: 1
            }
        );
        // A key of another tenant sharing the target is never in K.
        let other = Revisions {
            create: 12,
            modified: 12,
            version: 1,
        };
        assert_eq!(tr.kv_to_virtual(b"zz", other).modified, tr.to_virtual(12));
    }

    /// Every compare on a copy-era key must hold on the target exactly when it holds on
    /// the virtual values, for every state the key can be in and every compared value.
    #[test]
    fn copied_key_compares_agree_with_virtual_ones() {
        let tr = translation();
        let states = [
            Revisions {
                create: 12,
                modified: 30,
                version: 2,
            },
            Revisions {
                create: 12,
                modified: 51,
                version: 3,
            },
            Revisions {
                create: 12,
                modified: 80,
                version: 9,
            },
        ];
        let relations = [Relation::Equal, Relation::NotEqual, Relation::Greater, Relation::Less];
        for st in states {
            let v = tr.kv_to_virtual(b"a", st);
            for virt in (0..=1200).step_by(1) {
                for rel in relations {
                    let m = tr.compare_mod_copied(b"a", virt).unwrap();
                    assert_eq!(
                        holds(st.modified, rel, m),
                        holds(v.modified, rel, virt),
                        "mod {st:?} {rel:?} {virt}"
                    );
                    let c = tr.compare_create_copied(b"a", virt).unwrap();
                    assert_eq!(
                        holds(st.create, rel, c),
                        holds(v.create, rel, virt),
                        "create {st:?} {rel:?} {virt}"
                    );
                    let ver = tr.compare_version_copied(b"a", virt).unwrap();
                    assert_eq!(
                        holds(st.version, rel, ver),
                        holds(v.version, rel, virt),
                        "version {st:?} {rel:?} {virt}"
                    );
                }
            }
        }
    }

    /// mod_revision and create_revision compares on a key of K need not know whether the
    /// target holds the copied incarnation or one created after the commit.
    #[test]
    fn copied_key_revision_compares_also_hold_for_a_new_incarnation() {
        let tr = translation();
        for (create, modified) in [(70, 70), (70, 95), (51, 51)] {
            let st = Revisions {
                create,
                modified,
                version: 1,
            };
            let v = tr.kv_to_virtual(b"a", st);
            for virt in 0..=1200 {
                for rel in [Relation::Equal, Relation::NotEqual, Relation::Greater, Relation::Less] {
                    let m = tr.compare_mod_copied(b"a", virt).unwrap();
                    assert_eq!(
                        holds(st.modified, rel, m),
                        holds(v.modified, rel, virt),
                        "mod {st:?} {rel:?} {virt}"
                    );
                    let c = tr.compare_create_copied(b"a", virt).unwrap();
                    assert_eq!(
                        holds(st.create, rel, c),
                        holds(v.create, rel, virt),
                        "create {st:?} {rel:?} {virt}"
                    );
                }
            }
        }
    }

    #[test]
    fn new_key_compares_agree_with_virtual_ones() {
        let tr = translation();
        // Absent (0) or written after the commit (target > t).
        for target in [0, 51, 52, 90] {
            let virt_actual = if target == 0 { 0 } else { tr.to_virtual(target) };
            for virt in 0..=1200 {
                for rel in [Relation::Equal, Relation::NotEqual, Relation::Greater, Relation::Less] {
                    let value = tr.compare_value_new(virt);
                    assert_eq!(
                        holds(target, rel, value),
                        holds(virt_actual, rel, virt),
                        "{target} {rel:?} {virt}"
                    );
                }
            }
        }
    }
}
