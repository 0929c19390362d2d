//! A history checker for the soak (tests/it/soak.rs): every operation the clients made,
//! with its start and end time, what it asked and what it got (or whether it failed
//! for sure, or its outcome is unknown), and every event every watcher received, checked
//! afterwards against what etcd promises (linearizability by revisions):
//!
//! - the watchers' events are one log: every watcher of the same keys saw the same event
//!   at each revision, in revision order, each exactly once, with the right prev_kv, and
//!   no event is missing from any of them;
//! - every acknowledged write is in that log at its revision, with its key and value; no
//!   two writes share a revision; a write whose outcome is unknown is there once or not
//!   at all, and a write that failed for sure is not there;
//! - real time: an operation that started after another ended has a revision at least
//!   that one's (a write: greater); revisions never go backwards for any client;
//! - every linearizable read equals the log's state at its header revision (value,
//!   create and mod revision, version), and so does the final state;
//! - a Txn that compared a mod_revision succeeded exactly when the log says it held;
//! - a key on a kept-alive lease is never deleted while its lease is kept alive.
//!
//! The checker proves itself on doctored histories first (the tests at the end): each
//! kind of anomaly must be caught.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// A key-value as etcd returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub create: i64,
    pub modified: i64,
    pub version: i64,
    pub lease: i64,
}

/// What a client asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Put {
        key: String,
        value: String,
        lease: i64,
    },
    /// A delete of one key, with prev_kv.
    Delete {
        key: String,
    },
    /// kube-apiserver's update: `mod_revision(key) == expect` then put, else get.
    KubeTxn {
        key: String,
        expect: i64,
        value: String,
    },
    /// A linearizable Get of one key.
    Get {
        key: String,
    },
    /// A linearizable Range over a prefix.
    List {
        prefix: String,
    },
    /// A read-only Txn: `mod_revision(key) == expect` then get key, else get key.
    ReadTxn {
        key: String,
        expect: i64,
    },
}

impl Call {
    pub fn is_write(&self) -> bool {
        matches!(self, Call::Put { .. } | Call::Delete { .. } | Call::KubeTxn { .. })
    }
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A write: its header revision (for a Delete of nothing, or a Txn that did not
    /// succeed, the revision it saw), the keys it deleted (prev_kv), and for a KubeTxn
    /// whether it succeeded and the key it read otherwise.
    Write {
        revision: i64,
        deleted: Vec<Kv>,
        succeeded: bool,
        read: Option<Kv>,
    },
    /// A read: its header revision, and the key-values.
    Read {
        revision: i64,
        kvs: Vec<Kv>,
        succeeded: bool,
    },
}

impl Answer {
    pub fn revision(&self) -> i64 {
        match self {
            Answer::Write { revision, .. } | Answer::Read { revision, .. } => *revision,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok(Answer),
    /// Not applied, for sure (e.g. refused before it was sent).
    Failed(String),
    /// May or may not have been applied (the answer was lost, the proxy died).
    Unknown(String),
}

/// One operation of one client. Times are nanoseconds on one monotonic clock.
#[derive(Debug, Clone)]
pub struct Op {
    pub client: usize,
    pub start: u64,
    /// `None` while it never ended (its client died).
    pub end: Option<u64>,
    pub call: Call,
    pub outcome: Outcome,
}

/// One event as a watcher received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub put: bool,
    pub kv: Kv,
    pub prev: Option<Kv>,
}

/// What one watch stream delivered: the revision it started from, and its events in
/// the order they came. A watcher that lost its stream opens another from the revision
/// after its last event; each stream is a session.
#[derive(Debug, Clone)]
pub struct WatchSession {
    pub watcher: usize,
    pub prefix: String,
    /// Whether the watch asked for prev_kv (then every event must carry the right one).
    pub prev_kv: bool,
    pub start_revision: i64,
    pub events: Vec<Event>,
    /// The last revision the stream is known to have delivered everything up to (its
    /// last progress notification or event); events of the log up to it must be there.
    pub complete_through: i64,
}

/// A lease kept alive by a client for the whole history, with a key on it.
#[derive(Debug, Clone)]
pub struct KeptLease {
    pub id: i64,
    pub key: String,
}

#[derive(Debug, Default, Clone)]
pub struct History {
    /// The state of the checked prefix before the first operation, and its revision.
    pub initial: BTreeMap<String, Kv>,
    pub initial_revision: i64,
    pub ops: Vec<Op>,
    pub watches: Vec<WatchSession>,
    pub leases: Vec<KeptLease>,
    /// The state read at the end (linearizable), with its revision.
    pub last: Option<(i64, BTreeMap<String, Kv>)>,
}

/// A violation the checker found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub kind: &'static str,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// What was checked, for the soak's report.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub ops: usize,
    pub acknowledged_writes: usize,
    pub unknown_writes: usize,
    pub reads_checked: usize,
    pub events: usize,
    pub sessions: usize,
    pub violations: Vec<Violation>,
}

/// The log: every revision's events, as the watchers saw them.
struct Log {
    /// revision -> events of that revision (in key order, as etcd sends one Txn's).
    by_rev: BTreeMap<i64, Vec<Event>>,
    /// key -> (revision, the key's state after it: None when deleted), in order.
    by_key: HashMap<String, Vec<(i64, Option<Kv>)>>,
    initial: BTreeMap<String, Kv>,
}

impl Log {
    /// The state of `key` at `revision`.
    fn state(&self, key: &str, revision: i64) -> Option<Kv> {
        if let Some(changes) = self.by_key.get(key) {
            let i = changes.partition_point(|(r, _)| *r <= revision);
            if i > 0 {
                return changes[i - 1].1.clone();
            }
        }
        self.initial.get(key).cloned()
    }

    /// Every key under `prefix` at `revision`.
    fn list(&self, prefix: &str, revision: i64) -> Vec<Kv> {
        let mut keys: Vec<&String> = self
            .initial
            .keys()
            .chain(self.by_key.keys())
            .filter(|k| k.starts_with(prefix))
            .collect();
        keys.sort();
        keys.dedup();
        keys.into_iter().filter_map(|k| self.state(k, revision)).collect()
    }
}

struct Checker<'a> {
    h: &'a History,
    v: Vec<Violation>,
}

impl Checker<'_> {
    fn flag(&mut self, kind: &'static str, detail: String) {
        if self.v.len() < 200 {
            self.v.push(Violation { kind, detail });
        }
    }

    /// Joins the watch sessions into one log, checking each against it.
    fn log(&mut self) -> Log {
        let mut by_rev: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
        // Per session: order, no duplicates.
        for s in &self.h.watches {
            let mut last: Option<(i64, &str)> = None;
            for e in &s.events {
                let here = (e.kv.modified, e.kv.key.as_str());
                if let Some(prev) = last {
                    if here <= prev {
                        self.flag(
                            "watch order",
                            format!(
                                "watcher {} (from {}): {} at {} after {} at {}",
                                s.watcher, s.start_revision, here.1, here.0, prev.1, prev.0
                            ),
                        );
                    }
                }
                last = Some(here);
                if e.kv.modified < s.start_revision || !e.kv.key.starts_with(&s.prefix) {
                    self.flag(
                        "watch range",
                        format!(
                            "watcher {} (from {} on {}): an event for {} at {}",
                            s.watcher, s.start_revision, s.prefix, e.kv.key, e.kv.modified
                        ),
                    );
                }
            }
        }
        // Union, checking that watchers agree on each (revision, key).
        for s in &self.h.watches {
            for e in &s.events {
                let at = by_rev.entry(e.kv.modified).or_default();
                match at.iter().find(|x| x.kv.key == e.kv.key) {
                    Some(x) if (x.put, &x.kv) != (e.put, &e.kv) => {
                        let x = x.clone();
                        self.flag(
                            "watchers disagree",
                            format!("at revision {}: {:?} and {:?}", e.kv.modified, x, e),
                        );
                    }
                    Some(_) => {}
                    None => at.push(Event {
                        prev: None,
                        ..e.clone()
                    }),
                }
            }
        }
        for evs in by_rev.values_mut() {
            evs.sort_by(|a, b| a.kv.key.cmp(&b.kv.key));
        }
        let mut by_key: HashMap<String, Vec<(i64, Option<Kv>)>> = HashMap::new();
        for (rev, evs) in &by_rev {
            for e in evs {
                by_key
                    .entry(e.kv.key.clone())
                    .or_default()
                    .push((*rev, e.put.then(|| e.kv.clone())));
            }
        }
        let log = Log {
            by_rev,
            by_key,
            initial: self.h.initial.clone(),
        };
        // Each event's version and create revision follow from the log before it, and
        // so does the prev_kv each watcher that asked for it received.
        let mut bad = Vec::new();
        for (rev, evs) in &log.by_rev {
            for e in evs.iter().filter(|e| e.put) {
                let (create, version) = match log.state(&e.kv.key, rev - 1) {
                    Some(b) => (b.create, b.version + 1),
                    None => (*rev, 1),
                };
                if (e.kv.create, e.kv.version) != (create, version) {
                    bad.push((
                        "event revisions",
                        format!(
                            "{} at {rev}: create {} version {}, expected create {create} version {version}",
                            e.kv.key, e.kv.create, e.kv.version
                        ),
                    ));
                }
            }
        }
        for s in self.h.watches.iter().filter(|s| s.prev_kv) {
            for e in &s.events {
                let before = log.state(&e.kv.key, e.kv.modified - 1);
                if e.prev != before {
                    bad.push((
                        "prev_kv",
                        format!(
                            "watcher {}: {} at {}: prev_kv {:?}, the key was {:?}",
                            s.watcher, e.kv.key, e.kv.modified, e.prev, before
                        ),
                    ));
                }
            }
        }
        for (k, d) in bad {
            self.flag(k, d);
        }
        // Completeness: every session has every event of its range and window.
        for s in &self.h.watches {
            let got: std::collections::HashSet<(i64, &str)> =
                s.events.iter().map(|e| (e.kv.modified, e.kv.key.as_str())).collect();
            let through = s.complete_through.max(s.events.last().map_or(0, |e| e.kv.modified));
            if through < s.start_revision {
                continue;
            }
            for (rev, evs) in log.by_rev.range(s.start_revision..=through) {
                for e in evs {
                    if e.kv.key.starts_with(&s.prefix) && !got.contains(&(*rev, e.kv.key.as_str())) {
                        self.flag(
                            "watch missed an event",
                            format!(
                                "watcher {} (from {}): {} at {rev} is not among its events",
                                s.watcher, s.start_revision, e.kv.key
                            ),
                        );
                    }
                }
            }
        }
        log
    }

    /// Each write against the log.
    fn writes(&mut self, log: &Log) {
        let mut by_rev: HashMap<i64, usize> = HashMap::new();
        for (i, op) in self.h.ops.iter().enumerate() {
            if !op.call.is_write() {
                continue;
            }
            let found = |log: &Log, key: &str, rev: i64, value: Option<&str>| -> bool {
                log.by_rev.get(&rev).is_some_and(|evs| {
                    evs.iter()
                        .any(|e| e.kv.key == key && e.put == value.is_some() && value.is_none_or(|v| e.kv.value == v))
                })
            };
            match (&op.call, &op.outcome) {
                (Call::Put { key, value, .. }, Outcome::Ok(Answer::Write { revision, .. }))
                | (
                    Call::KubeTxn { key, value, .. },
                    Outcome::Ok(Answer::Write {
                        revision,
                        succeeded: true,
                        ..
                    }),
                ) => {
                    if let Some(j) = by_rev.insert(*revision, i) {
                        self.flag(
                            "shared write revision",
                            format!("{:?} and {:?} both at {revision}", self.h.ops[j].call, op.call),
                        );
                    }
                    if !found(log, key, *revision, Some(value)) {
                        self.flag(
                            "acknowledged write lost",
                            format!("{key}={value} acknowledged at {revision}, not in the log there"),
                        );
                    }
                }
                (Call::Delete { key }, Outcome::Ok(Answer::Write { revision, deleted, .. })) => {
                    if deleted.is_empty() {
                        // Nothing to delete: the key did not exist at the revision it saw.
                        if let Some(kv) = log.state(key, *revision) {
                            self.flag(
                                "stale delete",
                                format!("a delete of {key} found nothing at {revision}, where it was {kv:?}"),
                            );
                        }
                        continue;
                    }
                    if let Some(j) = by_rev.insert(*revision, i) {
                        self.flag(
                            "shared write revision",
                            format!("{:?} and {:?} both at {revision}", self.h.ops[j].call, op.call),
                        );
                    }
                    if !found(log, key, *revision, None) {
                        self.flag(
                            "acknowledged write lost",
                            format!("the delete of {key} acknowledged at {revision} is not in the log there"),
                        );
                    }
                    let before = log.state(key, revision - 1);
                    if deleted.first() != before.as_ref() {
                        self.flag(
                            "delete prev_kv",
                            format!("the delete of {key} at {revision} returned {deleted:?}, the key was {before:?}"),
                        );
                    }
                }
                (
                    Call::KubeTxn { key, expect, .. },
                    Outcome::Ok(Answer::Write {
                        revision,
                        succeeded: false,
                        read,
                        ..
                    }),
                ) => {
                    let now = log.state(key, *revision);
                    let m = now.as_ref().map_or(0, |kv| kv.modified);
                    if m == *expect {
                        self.flag(
                            "txn compare",
                            format!("a Txn on {key} == {expect} failed at {revision}, where mod_revision was {m}"),
                        );
                    }
                    if read != &now {
                        self.flag(
                            "stale read",
                            format!("a failed Txn on {key} read {read:?} at {revision}, the log has {now:?}"),
                        );
                    }
                }
                (Call::Put { key, value, .. } | Call::KubeTxn { key, value, .. }, Outcome::Failed(why))
                    if log
                        .by_rev
                        .values()
                        .flatten()
                        .any(|e| e.put && e.kv.key == *key && e.kv.value == *value) =>
                {
                    self.flag(
                        "failed write applied",
                        format!("{key}={value} failed for sure ({why}) but is in the log"),
                    );
                }
                _ => {}
            }
            // A succeeded KubeTxn compared mod_revision == expect just before it.
            if let (
                Call::KubeTxn { key, expect, .. },
                Outcome::Ok(Answer::Write {
                    revision,
                    succeeded: true,
                    ..
                }),
            ) = (&op.call, &op.outcome)
            {
                let before = log.state(key, revision - 1).map_or(0, |kv| kv.modified);
                if before != *expect {
                    self.flag(
                        "txn compare",
                        format!("a Txn on {key} == {expect} succeeded at {revision}, where mod_revision was {before}"),
                    );
                }
            }
        }
        // Writes of unknown outcome appear at most once (their values are unique).
        let mut seen: HashMap<(&str, &str), i64> = HashMap::new();
        for (rev, evs) in &log.by_rev {
            for e in evs.iter().filter(|e| e.put) {
                if let Some(r) = seen.insert((&e.kv.key, &e.kv.value), *rev) {
                    self.flag(
                        "write applied twice",
                        format!("{}={} at {r} and at {rev}", e.kv.key, e.kv.value),
                    );
                }
            }
        }
    }

    /// Each read against the log's state at its revision.
    fn reads(&mut self, log: &Log) -> usize {
        let mut n = 0;
        for op in &self.h.ops {
            let Outcome::Ok(Answer::Read {
                revision,
                kvs,
                succeeded,
            }) = &op.outcome
            else {
                continue;
            };
            n += 1;
            match &op.call {
                Call::Get { key } => {
                    let want = log.state(key, *revision);
                    if kvs.first() != want.as_ref() || kvs.len() > 1 {
                        self.flag(
                            "stale read",
                            format!("a Get of {key} at {revision} returned {kvs:?}, the log has {want:?}"),
                        );
                    }
                }
                Call::List { prefix } => {
                    let want = log.list(prefix, *revision);
                    if *kvs != want {
                        let diff: Vec<String> = want
                            .iter()
                            .filter(|w| !kvs.contains(w))
                            .map(|w| format!("missing {w:?}"))
                            .chain(kvs.iter().filter(|k| !want.contains(k)).map(|k| format!("extra {k:?}")))
                            .take(3)
                            .collect();
                        self.flag(
                            "stale read",
                            format!("a List of {prefix} at {revision} differs from the log: {diff:?}"),
                        );
                    }
                }
                Call::ReadTxn { key, expect } => {
                    let want = log.state(key, *revision);
                    let m = want.as_ref().map_or(0, |kv| kv.modified);
                    if (m == *expect) != *succeeded {
                        self.flag(
                            "txn compare",
                            format!("a read-only Txn on {key} == {expect} at {revision}: succeeded {succeeded}, mod_revision was {m}"),
                        );
                    }
                    if kvs.first() != want.as_ref() {
                        self.flag(
                            "stale read",
                            format!("a read-only Txn read {key} at {revision} as {kvs:?}, the log has {want:?}"),
                        );
                    }
                }
                _ => {}
            }
        }
        n
    }

    /// Real-time order of revisions, and revisions per client.
    /// The revision at which a write of unknown outcome was applied, if it was.
    fn applied_at(log: &Log, op: &Op) -> Option<i64> {
        let (key, value) = match &op.call {
            Call::Put { key, value, .. } | Call::KubeTxn { key, value, .. } => (key, value),
            _ => return None,
        };
        log.by_rev
            .iter()
            .find(|(_, evs)| evs.iter().any(|e| e.put && &e.kv.key == key && &e.kv.value == value))
            .map(|(r, _)| *r)
    }

    fn real_time(&mut self, log: &Log) {
        // Ops that ended, by end time; each op must have a revision at least the largest
        // of the ops that ended before it started (greater, for a write).
        let mut ended: Vec<(u64, i64, usize)> = self
            .h
            .ops
            .iter()
            .enumerate()
            .filter_map(|(i, op)| match (&op.outcome, op.end) {
                (Outcome::Ok(a), Some(end)) => Some((end, a.revision(), i)),
                _ => None,
            })
            .collect();
        ended.sort_unstable();
        let mut by_start: Vec<usize> = (0..self.h.ops.len()).collect();
        by_start.sort_by_key(|&i| self.h.ops[i].start);
        let mut j = 0;
        let mut max: Option<(i64, usize)> = None;
        for i in by_start {
            let op = &self.h.ops[i];
            while j < ended.len() && ended[j].0 < op.start {
                if max.is_none_or(|(r, _)| ended[j].1 > r) {
                    max = Some((ended[j].1, ended[j].2));
                }
                j += 1;
            }
            let Some((before, who)) = max else { continue };
            let (rev, new_revision) = match &op.outcome {
                Outcome::Ok(a) => (a.revision(), Self::makes_revision(op, a)),
                // Applied although its answer was lost: at a revision after everything
                // that ended before it started.
                Outcome::Unknown(_) => match Self::applied_at(log, op) {
                    Some(r) => (r, true),
                    None => continue,
                },
                Outcome::Failed(_) => continue,
            };
            if rev < before || (new_revision && rev == before) {
                self.flag(
                    "real-time order",
                    format!(
                        "{:?} (client {}) at revision {rev} started after {:?} (client {}) ended at revision {before}",
                        op.call, op.client, self.h.ops[who].call, self.h.ops[who].client
                    ),
                );
            }
        }
    }

    /// Whether an answered op made a revision of its own (a write that changed something).
    fn makes_revision(op: &Op, a: &Answer) -> bool {
        {
            match a {
                Answer::Write { succeeded, deleted, .. } => match op.call {
                    Call::Delete { .. } => !deleted.is_empty(),
                    _ => *succeeded,
                },
                Answer::Read { .. } => false,
            }
        }
    }

    fn leases(&mut self, log: &Log) {
        for l in &self.h.leases {
            for (rev, evs) in &log.by_rev {
                for e in evs {
                    if e.kv.key == l.key && !e.put {
                        self.flag(
                            "lease lost",
                            format!("{} (on lease {:x}, kept alive) was deleted at {rev}", l.key, l.id),
                        );
                    }
                }
            }
        }
    }

    fn last(&mut self, log: &Log) {
        let Some((rev, state)) = &self.h.last else { return };
        let prefixes: Vec<&str> = self.h.watches.iter().map(|w| w.prefix.as_str()).collect();
        let Some(prefix) = prefixes.iter().min_by_key(|p| p.len()) else {
            return;
        };
        let want: BTreeMap<String, Kv> = log
            .list(prefix, *rev)
            .into_iter()
            .map(|kv| (kv.key.clone(), kv))
            .collect();
        let got: BTreeMap<String, Kv> = state
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if want != got {
            let diff: Vec<String> = want
                .iter()
                .filter(|(k, v)| got.get(*k) != Some(v))
                .map(|(k, v)| format!("{k}: log {:?}, read {:?}", v, got.get(k)))
                .chain(
                    got.keys()
                        .filter(|k| !want.contains_key(*k))
                        .map(|k| format!("{k}: read, not in the log")),
                )
                .take(5)
                .collect();
            self.flag("final state", format!("at {rev}: {diff:?}"));
        }
    }
}

/// Checks a history; the report lists every violation found (empty: none).
pub fn check(h: &History) -> Report {
    let mut c = Checker { h, v: Vec::new() };
    let log = c.log();
    c.writes(&log);
    let reads = c.reads(&log);
    c.real_time(&log);
    c.leases(&log);
    c.last(&log);
    Report {
        ops: h.ops.len(),
        acknowledged_writes: h
            .ops
            .iter()
            .filter(|o| o.call.is_write() && matches!(o.outcome, Outcome::Ok(_)))
            .count(),
        unknown_writes: h
            .ops
            .iter()
            .filter(|o| o.call.is_write() && matches!(o.outcome, Outcome::Unknown(_)))
            .count(),
        reads_checked: reads,
        events: log.by_rev.values().map(Vec::len).sum(),
        sessions: h.watches.len(),
        violations: c.v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, create: i64, modified: i64, version: i64) -> Kv {
        Kv {
            key: key.into(),
            value: value.into(),
            create,
            modified,
            version,
            lease: 0,
        }
    }

    fn put(client: usize, t: (u64, u64), key: &str, value: &str, rev: i64) -> Op {
        Op {
            client,
            start: t.0,
            end: Some(t.1),
            call: Call::Put {
                key: key.into(),
                value: value.into(),
                lease: 0,
            },
            outcome: Outcome::Ok(Answer::Write {
                revision: rev,
                deleted: vec![],
                succeeded: true,
                read: None,
            }),
        }
    }

    fn get(client: usize, t: (u64, u64), key: &str, rev: i64, got: Option<Kv>) -> Op {
        Op {
            client,
            start: t.0,
            end: Some(t.1),
            call: Call::Get { key: key.into() },
            outcome: Outcome::Ok(Answer::Read {
                revision: rev,
                kvs: got.into_iter().collect(),
                succeeded: true,
            }),
        }
    }

    /// A clean history: /p/a written twice, /p/b once and deleted, a kube Txn, reads,
    /// two watchers that saw everything.
    fn clean() -> History {
        let a1 = kv("/p/a", "1", 10, 10, 1);
        let a2 = kv("/p/a", "2", 10, 11, 2);
        let b1 = kv("/p/b", "x", 12, 12, 1);
        let a3 = kv("/p/a", "3", 10, 14, 3);
        let events = vec![
            Event {
                put: true,
                kv: a1.clone(),
                prev: None,
            },
            Event {
                put: true,
                kv: a2.clone(),
                prev: Some(a1.clone()),
            },
            Event {
                put: true,
                kv: b1.clone(),
                prev: None,
            },
            Event {
                put: false,
                kv: Kv {
                    value: String::new(),
                    create: 0,
                    modified: 13,
                    version: 0,
                    ..b1.clone()
                },
                prev: Some(b1.clone()),
            },
            Event {
                put: true,
                kv: a3.clone(),
                prev: Some(a2.clone()),
            },
        ];
        let mut delete = Op {
            client: 2,
            start: 70,
            end: Some(80),
            call: Call::Delete { key: "/p/b".into() },
            outcome: Outcome::Ok(Answer::Write {
                revision: 13,
                deleted: vec![b1.clone()],
                succeeded: true,
                read: None,
            }),
        };
        delete.client = 2;
        let txn = Op {
            client: 1,
            start: 90,
            end: Some(100),
            call: Call::KubeTxn {
                key: "/p/a".into(),
                expect: 11,
                value: "3".into(),
            },
            outcome: Outcome::Ok(Answer::Write {
                revision: 14,
                deleted: vec![],
                succeeded: true,
                read: None,
            }),
        };
        let failed_txn = Op {
            client: 1,
            start: 110,
            end: Some(120),
            call: Call::KubeTxn {
                key: "/p/a".into(),
                expect: 11,
                value: "never".into(),
            },
            outcome: Outcome::Ok(Answer::Write {
                revision: 14,
                deleted: vec![],
                succeeded: false,
                read: Some(a3.clone()),
            }),
        };
        History {
            initial: BTreeMap::new(),
            initial_revision: 9,
            ops: vec![
                put(0, (0, 10), "/p/a", "1", 10),
                put(0, (20, 30), "/p/a", "2", 11),
                get(1, (35, 40), "/p/a", 11, Some(a2.clone())),
                put(2, (50, 60), "/p/b", "x", 12),
                delete,
                txn,
                failed_txn,
                get(3, (125, 130), "/p/a", 14, Some(a3.clone())),
                Op {
                    client: 3,
                    start: 131,
                    end: Some(140),
                    call: Call::List { prefix: "/p/".into() },
                    outcome: Outcome::Ok(Answer::Read {
                        revision: 14,
                        kvs: vec![a3.clone()],
                        succeeded: true,
                    }),
                },
            ],
            watches: vec![
                WatchSession {
                    watcher: 0,
                    prefix: "/p/".into(),
                    prev_kv: true,
                    start_revision: 10,
                    events: events.clone(),
                    complete_through: 14,
                },
                WatchSession {
                    watcher: 1,
                    prefix: "/p/".into(),
                    prev_kv: true,
                    start_revision: 10,
                    events,
                    complete_through: 14,
                },
            ],
            leases: vec![],
            last: Some((14, [("/p/a".to_string(), a3)].into_iter().collect())),
        }
    }

    fn kinds(h: &History) -> Vec<&'static str> {
        let mut k: Vec<&'static str> = check(h).violations.iter().map(|v| v.kind).collect();
        k.sort();
        k.dedup();
        k
    }

    #[test]
    fn a_clean_history_passes() {
        let r = check(&clean());
        assert!(r.violations.is_empty(), "{:#?}", r.violations);
        assert_eq!(r.acknowledged_writes, 6, "five writes and a Txn that did not succeed");
        assert_eq!(r.reads_checked, 3);
        assert_eq!(r.events, 5);
    }

    #[test]
    fn a_stale_read_is_caught() {
        let mut h = clean();
        // The Get after the update answered the old value at the new revision.
        h.ops[7] = get(3, (125, 130), "/p/a", 14, Some(kv("/p/a", "2", 10, 11, 2)));
        assert_eq!(kinds(&h), ["stale read"]);
    }

    #[test]
    fn a_revision_going_backwards_in_real_time_is_caught() {
        let mut h = clean();
        // A read that started after the update ended, answered at an older revision
        // (with the value that was right there).
        h.ops[7] = get(3, (125, 130), "/p/a", 11, Some(kv("/p/a", "2", 10, 11, 2)));
        assert_eq!(kinds(&h), ["real-time order"]);
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        let mut h = clean();
        for w in &mut h.watches {
            w.events.retain(|e| e.kv.modified != 14);
        }
        h.last = Some((
            14,
            [("/p/a".to_string(), kv("/p/a", "2", 10, 11, 2))].into_iter().collect(),
        ));
        let k = kinds(&h);
        assert!(k.contains(&"acknowledged write lost"), "{k:?}");
    }

    #[test]
    fn two_writes_at_one_revision_are_caught() {
        let mut h = clean();
        h.ops[3] = put(2, (50, 60), "/p/b", "x", 11);
        let k = kinds(&h);
        assert!(k.contains(&"shared write revision"), "{k:?}");
    }

    #[test]
    fn a_duplicated_missing_or_reordered_watch_event_is_caught() {
        let mut h = clean();
        let dup = h.watches[0].events[2].clone();
        h.watches[0].events.insert(3, dup);
        assert_eq!(kinds(&h), ["watch order"]);

        let mut h = clean();
        h.watches[1].events.remove(1);
        assert_eq!(kinds(&h), ["watch missed an event"]);

        let mut h = clean();
        h.watches[0].events.swap(0, 1);
        assert!(kinds(&h).contains(&"watch order"));
    }

    #[test]
    fn a_wrong_prev_kv_or_disagreeing_watchers_are_caught() {
        let mut h = clean();
        h.watches[1].events[1].prev = Some(kv("/p/a", "0", 10, 9, 1));
        assert_eq!(kinds(&h), ["prev_kv"]);
        let mut h = clean();
        h.watches[0].events[3].prev = None;
        assert_eq!(kinds(&h), ["prev_kv"], "a delete without its prev_kv");

        let mut h = clean();
        h.watches[1].events[2].kv.value = "y".into();
        assert!(kinds(&h).contains(&"watchers disagree"));
    }

    #[test]
    fn an_inconsistent_txn_compare_is_caught() {
        let mut h = clean();
        // The Txn claims success against a mod_revision the key did not have.
        if let Call::KubeTxn { expect, .. } = &mut h.ops[5].call {
            *expect = 10;
        }
        assert_eq!(kinds(&h), ["txn compare"]);

        let mut h = clean();
        // A Txn that failed although its compare held.
        if let Call::KubeTxn { expect, .. } = &mut h.ops[6].call {
            *expect = 14;
        }
        assert_eq!(kinds(&h), ["txn compare"]);
    }

    #[test]
    fn a_failed_write_that_was_applied_or_applied_twice_is_caught() {
        let mut h = clean();
        h.ops[3].outcome = Outcome::Failed("refused".into());
        assert_eq!(kinds(&h), ["failed write applied"]);

        let mut h = clean();
        let mut again = h.watches[0].events[0].clone();
        again.kv = kv("/p/a", "1", 10, 15, 4);
        again.prev = Some(kv("/p/a", "3", 10, 14, 3));
        for w in &mut h.watches {
            w.events.push(again.clone());
            w.complete_through = 15;
        }
        h.last = Some((15, [("/p/a".to_string(), again.kv.clone())].into_iter().collect()));
        assert_eq!(kinds(&h), ["write applied twice"]);
    }

    #[test]
    fn a_write_of_unknown_outcome_may_be_there_but_not_before_what_preceded_it() {
        let mut h = clean();
        // The second put's answer was lost; it was applied: fine.
        h.ops[1].outcome = Outcome::Unknown("timed out".into());
        h.ops[1].end = None;
        assert!(kinds(&h).is_empty(), "{:?}", check(&h).violations);
        // It started after the read at 11 ended, yet it was applied at 11: a revision
        // older than what preceded it.
        h.ops[1].start = 45;
        assert_eq!(kinds(&h), ["real-time order"]);
    }

    #[test]
    fn a_lost_lease_key_and_a_wrong_final_state_are_caught() {
        let mut h = clean();
        h.leases.push(KeptLease {
            id: 7,
            key: "/p/b".into(),
        });
        assert_eq!(kinds(&h), ["lease lost"]);

        let mut h = clean();
        h.last = Some((14, BTreeMap::new()));
        assert_eq!(kinds(&h), ["final state"]);
    }

    #[test]
    fn a_delete_with_a_wrong_prev_kv_or_a_stale_failed_txn_read_is_caught() {
        let mut h = clean();
        if let Outcome::Ok(Answer::Write { deleted, .. }) = &mut h.ops[4].outcome {
            deleted[0].value = "old".into();
        }
        assert_eq!(kinds(&h), ["delete prev_kv"]);

        let mut h = clean();
        if let Outcome::Ok(Answer::Write { read, .. }) = &mut h.ops[6].outcome {
            *read = Some(kv("/p/a", "2", 10, 11, 2));
        }
        assert_eq!(kinds(&h), ["stale read"]);
    }
}
