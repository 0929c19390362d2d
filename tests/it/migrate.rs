//! Live migrations under a concurrent load through the proxy: kube-style Txn writers,
//! Put/Delete writers, a watcher with prev_kv, and a lease kept alive with keys on it.
//! Each test checks the invariants of docs/ARCHITECTURE.md (I1-I7) across the cutover.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::support::{client, eventually, Etcd, Proxy};

pub(crate) const TENANT: &str = "/registry/";

pub(crate) fn two_stores(a: &Etcd, b: &Etcd, extra: &str) -> String {
    format!(
        "{extra}prefix: {TENANT}\ndataStore: default\ndataStores:\n  default:\n    endpoints: [\"{}\"]\n  dedicated:\n    endpoints: [\"{}\"]\n",
        a.endpoint, b.endpoint
    )
}

/// What the load saw: every acknowledged write, every error, every watch event.
#[derive(Default)]
pub(crate) struct Seen {
    /// key -> the values acknowledged, in order (None: a delete).
    pub acked: BTreeMap<String, Vec<Option<String>>>,
    /// key -> writes whose outcome the client cannot know (answered "request timed out",
    /// or cut short by the death of the proxy the load used): (the number of writes of
    /// the key acknowledged before it, the value or None for a delete).
    pub unknown: BTreeMap<String, Vec<(usize, Option<String>)>>,
    /// Writes answered `etcdserver: request timed out` (etcd's "outcome unknown").
    pub timeouts: Vec<String>,
    /// The proxy the load used was killed under it ([`Load::abandon`]).
    pub abandoned: bool,
    pub errors: Vec<String>,
    /// Header revisions that went backwards for one client (I2).
    pub backwards: Vec<String>,
    /// (watch_id, key, value or None for a delete, mod_revision)
    pub events: Vec<(i64, String, Option<String>, i64)>,
    pub watch_cancels: usize,
}

pub(crate) struct Load {
    seen: Arc<Mutex<Seen>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    pub lease: i64,
    /// The key on the lease, and the client that revokes the lease when the load ends.
    holder: String,
    client: etcd_client::Client,
    /// Set by [`Load::abandon`]: errors from here on are the proxy's death, not findings.
    dead: Arc<AtomicBool>,
}

/// A write that got no answer: returns whether the task should end (its proxy is dead).
fn write_failed(seen: &Mutex<Seen>, dead: &AtomicBool, key: &str, value: Option<String>, error: String) -> bool {
    let mut s = seen.lock();
    let before = s.acked.get(key).map_or(0, Vec::len);
    if dead.load(Ordering::SeqCst) {
        s.unknown.entry(key.to_string()).or_default().push((before, value));
        return true;
    }
    if error.contains("etcdserver: request timed out") {
        s.unknown.entry(key.to_string()).or_default().push((before, value));
        s.timeouts.push(error);
        return false;
    }
    s.errors.push(error);
    false
}

fn note_rev(seen: &Mutex<Seen>, who: &str, last: &mut i64, rev: i64) {
    if rev < *last {
        seen.lock().backwards.push(format!("{who}: {rev} after {last}"));
    }
    *last = rev.max(*last);
}

impl Load {
    pub(crate) async fn start(endpoint: &str) -> Load {
        Self::start_in(endpoint, "").await
    }

    /// A load on the keys under `TENANT` + `ns` only (its watcher too), so that several
    /// loads, through several proxies, can run side by side and be checked one by one.
    pub(crate) async fn start_in(endpoint: &str, ns: &str) -> Load {
        let base = format!("{TENANT}{ns}");
        let dead = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut c = client(endpoint).await;
        let start_rev = c
            .get(format!("{TENANT}x"), None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision()
            + 1;

        // The watcher first, so that it sees every write of the load.
        {
            let mut c = client(endpoint).await;
            let seen = seen.clone();
            let mut stop = stop_rx.clone();
            let (_w, mut stream) = c
                .watch(
                    base.as_str(),
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_prev_key()
                            .with_start_revision(start_rev),
                    ),
                )
                .await
                .unwrap();
            tasks.push(tokio::spawn(async move {
                let _w = _w;
                let mut last = 0;
                let mut stopping = false;
                loop {
                    let msg = if stopping {
                        // Let the events of the last writes arrive, then end.
                        match tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
                            Ok(m) => m,
                            Err(_) => return,
                        }
                    } else {
                        tokio::select! {
                            m = stream.message() => m,
                            _ = stop.changed() => { stopping = true; continue; }
                        }
                    };
                    let Ok(Some(r)) = msg else { return };
                    let mut s = seen.lock();
                    if r.canceled() {
                        s.watch_cancels += 1;
                    }
                    let id = r.watch_id();
                    if let Some(h) = r.header() {
                        if h.revision() < last {
                            s.backwards.push(format!("watch header {} after {last}", h.revision()));
                        }
                        last = last.max(h.revision());
                    }
                    for e in r.events() {
                        let kv = e.kv().unwrap();
                        let value = match e.event_type() {
                            EventType::Put => Some(kv.value_str().unwrap().to_string()),
                            EventType::Delete => None,
                        };
                        s.events
                            .push((id, kv.key_str().unwrap().to_string(), value, kv.mod_revision()));
                    }
                }
            }));
        }

        // kube-style writers: create with mod_revision == 0, update on the last seen one.
        for w in 0..3 {
            let mut c = client(endpoint).await;
            let seen = seen.clone();
            let stop = stop_rx.clone();
            let dead = dead.clone();
            let base = base.clone();
            tasks.push(tokio::spawn(async move {
                let mut last = 0;
                let mut n = 0;
                while !*stop.borrow() {
                    let key = format!("{base}pods/ns/pod-{w}-{}", n % 5);
                    n += 1;
                    let got = match c.get(key.as_str(), None).await {
                        Ok(g) => g,
                        Err(_) if dead.load(Ordering::SeqCst) => return,
                        Err(e) => {
                            seen.lock().errors.push(format!("get {key}: {e}"));
                            continue;
                        }
                    };
                    note_rev(&seen, "kube get", &mut last, got.header().unwrap().revision());
                    let rev = got.kvs().first().map_or(0, |kv| kv.mod_revision());
                    let value = format!("v{n}");
                    let txn = Txn::new()
                        .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)])
                        .and_then([TxnOp::put(key.as_str(), value.as_str(), None)])
                        .or_else([TxnOp::get(key.as_str(), None)]);
                    match c.txn(txn).await {
                        Ok(t) => {
                            note_rev(&seen, "kube txn", &mut last, t.header().unwrap().revision());
                            if t.succeeded() {
                                seen.lock().acked.entry(key).or_default().push(Some(value));
                            } else {
                                seen.lock()
                                    .errors
                                    .push(format!("txn on {key} at {rev} did not succeed"));
                            }
                        }
                        Err(e) => {
                            if write_failed(&seen, &dead, &key, Some(value), format!("txn {key}: {e}")) {
                                return;
                            }
                        }
                    }
                    // Pacing: the load's write rate, not a wait for a condition.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }

        // Put/Delete writer.
        {
            let mut c = client(endpoint).await;
            let seen = seen.clone();
            let stop = stop_rx.clone();
            let dead = dead.clone();
            let base = base.clone();
            tasks.push(tokio::spawn(async move {
                let mut last = 0;
                let mut n = 0u64;
                while !*stop.borrow() {
                    n += 1;
                    let key = format!("{base}events/ev-{}", n % 7);
                    if n.is_multiple_of(3) {
                        match c.delete(key.as_str(), None).await {
                            Ok(d) => {
                                note_rev(&seen, "delete", &mut last, d.header().unwrap().revision());
                                if d.deleted() > 0 {
                                    seen.lock().acked.entry(key).or_default().push(None);
                                }
                            }
                            Err(e) => {
                                if write_failed(&seen, &dead, &key, None, format!("delete {key}: {e}")) {
                                    return;
                                }
                            }
                        }
                    } else {
                        let value = format!("e{n}");
                        match c.put(key.as_str(), value.as_str(), None).await {
                            Ok(p) => {
                                note_rev(&seen, "put", &mut last, p.header().unwrap().revision());
                                seen.lock().acked.entry(key).or_default().push(Some(value));
                            }
                            Err(e) => {
                                if write_failed(&seen, &dead, &key, Some(value), format!("put {key}: {e}")) {
                                    return;
                                }
                            }
                        }
                    }
                    // Pacing: the load's write rate, not a wait for a condition.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }

        // A lease with a key on it, kept alive through the proxy.
        let lease = c.lease_grant(5, None).await.unwrap().id();
        let key = format!("{base}leases/holder");
        c.put(
            key.as_str(),
            "alive",
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
        seen.lock()
            .acked
            .entry(key.clone())
            .or_default()
            .push(Some("alive".into()));
        {
            let (mut keeper, mut stream) = c.lease_keep_alive(lease).await.unwrap();
            let seen = seen.clone();
            let stop = stop_rx.clone();
            let dead = dead.clone();
            tasks.push(tokio::spawn(async move {
                while !*stop.borrow() {
                    if let Err(e) = keeper.keep_alive().await {
                        if !dead.load(Ordering::SeqCst) {
                            seen.lock().errors.push(format!("keep-alive send: {e}"));
                        }
                        return;
                    }
                    match stream.message().await {
                        Ok(Some(r)) if r.ttl() > 0 => {}
                        other => {
                            if !dead.load(Ordering::SeqCst) {
                                seen.lock().errors.push(format!("keep-alive answer: {other:?}"));
                            }
                            return;
                        }
                    }
                    // Pacing: one keep-alive every half second, as a client sends them.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }));
        }
        Load {
            seen,
            stop,
            tasks,
            lease,
            holder: key,
            client: c,
            dead,
        }
    }

    /// Says that the proxy this load uses is about to be killed: its clients' errors from
    /// now on are that death, and the writes they were making have an unknown outcome.
    pub(crate) fn abandon(&self) {
        self.dead.store(true, Ordering::SeqCst);
    }

    pub(crate) async fn finish(self) -> Seen {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        let abandoned = self.dead.load(Ordering::SeqCst);
        // A load that ends revokes its lease through the proxy: the key on it goes now, as
        // an acknowledged delete, instead of when the lease expires, maybe after a check.
        if !abandoned {
            let mut c = self.client.clone();
            match c.lease_revoke(self.lease).await {
                Ok(_) => self
                    .seen
                    .lock()
                    .acked
                    .entry(self.holder.clone())
                    .or_default()
                    .push(None),
                Err(e) => {
                    write_failed(
                        &self.seen,
                        &self.dead,
                        &self.holder,
                        None,
                        format!("revoke the load's lease: {e}"),
                    );
                }
            }
        }
        let mut seen = Arc::try_unwrap(self.seen)
            .map(|m| m.into_inner())
            .unwrap_or_else(|_| panic!("load tasks still hold the record"));
        seen.abandoned = abandoned;
        seen
    }

    /// Waits until the load has acknowledged `n` more writes.
    pub(crate) async fn progress(&self, n: usize) {
        let count = || self.seen.lock().acked.values().map(Vec::len).sum::<usize>();
        let target = count() + n;
        eventually("the load makes progress", Duration::from_secs(20), || async {
            count() >= target
        })
        .await;
    }
}

/// Starts a migration through the admin API and waits for its end; returns the view.
pub(crate) async fn migrate(proxy: &Proxy, to: &str) -> serde_json::Value {
    let (code, body) = proxy.admin_post("/v1/migrations", json!({ "to": to })).await;
    assert_eq!(code, 202, "{body}");
    let mut last = serde_json::Value::Null;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let st = proxy.status().await;
        if st["migration"]["outcome"] != "Running" && st["migration"]["id"] == body["id"] {
            return st["migration"].clone();
        }
        if st != last {
            last = st;
        }
        assert!(std::time::Instant::now() < deadline, "migration did not end: {last}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every key of the tenant with (value, create, mod, version), as a client sees it.
/// Asks `proxy` to migrate to "dedicated" until it accepts: a dead leader's lock lasts
/// until its lease expires, and the answer is 409 until then.
pub(crate) async fn start_when_unlocked(proxy: &Proxy) {
    eventually("a migration can start", Duration::from_secs(20), || async {
        let (code, body) = proxy
            .admin_post("/v1/migrations", json!({"to": "dedicated", "overwrite": true}))
            .await;
        assert!(code == 202 || code == 409, "{code} {body}");
        code == 202
    })
    .await;
}

/// `n` configmaps with history: the first ten updated once, cm-3 deleted and recreated.
pub(crate) async fn seed_with_history(c: &mut etcd_client::Client, n: usize) {
    for i in 0..n {
        c.put(format!("{TENANT}configmaps/ns/cm-{i}"), "v1", None)
            .await
            .unwrap();
    }
    for i in 0..10 {
        c.put(format!("{TENANT}configmaps/ns/cm-{i}"), "v2", None)
            .await
            .unwrap();
    }
    c.delete(format!("{TENANT}configmaps/ns/cm-3"), None).await.unwrap();
    c.put(format!("{TENANT}configmaps/ns/cm-3"), "again", None)
        .await
        .unwrap();
}

pub(crate) async fn tenant_state(endpoint: &str) -> BTreeMap<String, (String, i64, i64, i64)> {
    let mut c = client(endpoint).await;
    let r = c.get(TENANT, Some(GetOptions::new().with_prefix())).await.unwrap();
    r.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                (
                    kv.value_str().unwrap().to_string(),
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                ),
            )
        })
        .collect()
}

pub(crate) type TenantState = BTreeMap<String, (String, i64, i64, i64)>;

/// I1, I2, I4 and I5 for one load: no error, every acknowledged write in place, revisions
/// never backwards, the watch saw every write once, in order, on one watch ID, and the
/// lease was kept alive.
pub(crate) fn check_load(seen: &Seen, after: &TenantState) {
    check_load_allowing(seen, after, 0)
}

/// [`check_load`], allowing up to `timeouts` writes answered `etcdserver: request timed
/// out` (a datastore member lost with the write in flight: etcd's own "outcome unknown").
/// Writes of unknown outcome (those, and the ones cut short when the load's proxy was
/// killed, [`Load::abandon`]) may or may not have happened; every other write is checked
/// as strictly as ever. For an abandoned load, the watch is checked up to where it ended.
pub(crate) fn check_load_allowing(seen: &Seen, after: &TenantState, timeouts: usize) {
    assert!(
        seen.errors.is_empty(),
        "client errors in hold mode: {:?}",
        &seen.errors[..seen.errors.len().min(10)]
    );
    assert!(
        seen.timeouts.len() <= timeouts,
        "writes with an unknown outcome (at most {timeouts} allowed): {:?}",
        seen.timeouts
    );
    assert!(
        seen.backwards.is_empty(),
        "I2: revisions went backwards: {:?}",
        seen.backwards
    );
    assert_eq!(seen.watch_cancels, 0, "I4: the watch was canceled");
    let no_unknown = Vec::new();
    let unknown = |key: &str| seen.unknown.get(key).unwrap_or(&no_unknown);
    let mut keys: std::collections::BTreeSet<&String> = seen.acked.keys().collect();
    keys.extend(seen.unknown.keys());
    // I1: the last acknowledged state of every key is what clients read now (or a later
    // write of unknown outcome).
    for key in &keys {
        if seen.abandoned && key.contains("leases/holder") {
            continue; // nobody keeps its lease alive any more
        }
        let acked = seen.acked.get(*key).map_or(&[][..], Vec::as_slice);
        let last = acked.last().cloned().flatten();
        let now = after.get(*key).map(|v| v.0.clone());
        let later: Vec<&Option<String>> = unknown(key)
            .iter()
            .filter(|(before, _)| *before == acked.len())
            .map(|(_, v)| v)
            .collect();
        assert!(
            now == last || later.contains(&&now),
            "I1: {key} is {now:?}; last acknowledged {last:?}, unknown outcome after it {later:?}"
        );
    }
    // I4: one event per acknowledged write, in order, on one watch_id.
    let ids: std::collections::BTreeSet<i64> = seen.events.iter().map(|e| e.0).collect();
    if seen.abandoned {
        assert!(ids.len() <= 1, "I4: events on one watch_id: {ids:?}");
    } else {
        assert_eq!(ids.len(), 1, "I4: events on one watch_id: {ids:?}");
    }
    let mut by_key: HashMap<&str, Vec<Option<String>>> = HashMap::new();
    let mut last_rev = 0;
    for (_, key, value, rev) in &seen.events {
        assert!(
            *rev >= last_rev,
            "I4: events in revision order ({rev} after {last_rev})"
        );
        last_rev = *rev;
        by_key.entry(key.as_str()).or_default().push(value.clone());
    }
    for key in by_key.keys() {
        assert!(
            keys.iter().any(|k| k.as_str() == *key),
            "I4: an event for {key}, which the load never wrote"
        );
    }
    for key in &keys {
        if key.contains("leases/holder") {
            continue; // written before the watch started
        }
        let acked = seen.acked.get(*key).map_or(&[][..], Vec::as_slice);
        let events = by_key.get(key.as_str()).cloned().unwrap_or_default();
        if unknown(key).is_empty() && !seen.abandoned {
            assert_eq!(
                events, acked,
                "I4: the events of {key} are its acknowledged writes, once each"
            );
            continue;
        }
        // Acknowledged writes must each appear; writes of unknown outcome may.
        let mut expected: Vec<(Option<String>, bool)> = Vec::new();
        for i in 0..=acked.len() {
            for (before, v) in unknown(key) {
                if *before == i {
                    expected.push((v.clone(), true));
                }
            }
            if let Some(v) = acked.get(i) {
                expected.push((v.clone(), false));
            }
        }
        assert!(
            events_match(&events, &expected, seen.abandoned),
            "I4: the events of {key} ({events:?}) are its writes once each, in order \
             (acknowledged: {acked:?}, unknown outcome: {:?})",
            unknown(key)
        );
    }
}

/// Whether `events` are `expected` in order, where the items marked `true` may be missing;
/// with `prefix_ok`, the events may end before the expected list does (a watch whose
/// proxy was killed).
fn events_match(events: &[Option<String>], expected: &[(Option<String>, bool)], prefix_ok: bool) -> bool {
    let (n, m) = (events.len(), expected.len());
    // reach[i][j]: events[..i] are expected[..j].
    let mut reach = vec![vec![false; m + 1]; n + 1];
    reach[0][0] = true;
    for i in 0..=n {
        for j in 0..m {
            if !reach[i][j] {
                continue;
            }
            if expected[j].1 {
                reach[i][j + 1] = true;
            }
            if i < n && events[i] == expected[j].0 {
                reach[i + 1][j + 1] = true;
            }
        }
    }
    if prefix_ok {
        reach[n].iter().any(|r| *r)
    } else {
        reach[n][m]
    }
}

#[tokio::test]
async fn a_live_migration_keeps_every_write_watch_revision_and_lease() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let proxy = Proxy::start(&two_stores(&a, &b, "")).await;
    let mut c = client(&proxy.endpoint).await;
    // Keys with history before the migration (several versions, one deleted and recreated).
    seed_with_history(&mut c, 50).await;
    // A key outside the tenant, which must stay behind.
    let mut direct_a = client(&a.endpoint).await;
    direct_a.put("/other-tenant/x", "1", None).await.unwrap();
    // A lease nobody keeps alive, with a key on it: it must expire on the target too.
    let short = c.lease_grant(4, None).await.unwrap().id();
    c.put(
        format!("{TENANT}short-lived"),
        "x",
        Some(etcd_client::PutOptions::new().with_lease(short)),
    )
    .await
    .unwrap();
    let before = tenant_state(&proxy.endpoint).await;
    let cm0 = before[&format!("{TENANT}configmaps/ns/cm-0")].clone();
    let last_change_rev = c
        .get(format!("{TENANT}x"), None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    let load = Load::start(&proxy.endpoint).await;
    load.progress(30).await;
    let view = migrate(&proxy, "dedicated").await;
    assert_eq!(view["outcome"], "Succeeded", "{view}");
    load.progress(30).await;
    // I5: the lease kept its ID and is alive on the target (until the load ends).
    let lease = load.lease;
    let ttl = c.lease_time_to_live(lease, None).await.unwrap();
    assert!(ttl.ttl() > 0, "I5: the kept-alive lease lives on");
    let on_target = client(&b.endpoint).await.lease_time_to_live(lease, None).await.unwrap();
    assert!(on_target.ttl() > 0, "I5: same lease ID on the target");
    let seen = load.finish().await;

    let st = proxy.status().await;
    assert_eq!(st["dataStore"], "dedicated");
    assert_eq!(st["phase"], "Ready");
    let after = tenant_state(&proxy.endpoint).await;
    check_load(&seen, &after);

    // I3: keys untouched by the load keep create/mod revision and version.
    for (key, v) in &before {
        if key.contains("configmaps") {
            assert_eq!(after.get(key), Some(v), "I3: {key}");
        }
    }
    // I3: a Txn on a pre-migration mod_revision succeeds after the cutover.
    let key = format!("{TENANT}configmaps/ns/cm-0");
    let t = c
        .txn(
            Txn::new()
                .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, cm0.2)])
                .and_then([TxnOp::put(key.as_str(), "v3", None)]),
        )
        .await
        .unwrap();
    assert!(t.succeeded(), "I3: compare on the pre-migration mod_revision");
    let v = c
        .txn(
            Txn::new()
                .when([Compare::version(key.as_str(), CompareOp::Equal, cm0.3 + 1)])
                .and_then([TxnOp::get(key.as_str(), None)]),
        )
        .await
        .unwrap();
    assert!(v.succeeded(), "I3: compare on the version counts on from the source's");
    // I3/I7: a Range before the tenant's last change is etcd's compacted error.
    match c
        .get(key.as_str(), Some(GetOptions::new().with_revision(last_change_rev - 1)))
        .await
    {
        Err(etcd_client::Error::GRpcStatus(s)) => {
            assert_eq!(s.code(), tonic::Code::OutOfRange);
            assert_eq!(s.message(), "etcdserver: mvcc: required revision has been compacted");
        }
        other => panic!("I3: expected the compacted error, got {other:?}"),
    }

    // I1: the target holds the tenant; the source holds no tenant change after the fence.
    let mut direct_b = client(&b.endpoint).await;
    let on_b = direct_b
        .get(TENANT, Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .unwrap();
    let on_b: Vec<&str> = on_b
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap())
        .filter(|k| !k.contains('\0'))
        .collect();
    assert_eq!(
        on_b,
        after.keys().map(String::as_str).collect::<Vec<_>>(),
        "I1: target holds the tenant"
    );
    let fence = direct_a.get(format!("{TENANT}\0cutover/fence"), None).await.unwrap();
    let marker = &fence.kvs()[0];
    assert!(
        marker.value_str().unwrap().contains("\"moved\""),
        "the commit marker: {:?}",
        marker.value_str()
    );
    let on_a = direct_a
        .get(TENANT, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    for kv in on_a.kvs() {
        if !kv.key_str().unwrap().contains('\0') {
            assert!(
                kv.mod_revision() < marker.create_revision(),
                "I1: {} changed on the source after the fence",
                kv.key_str().unwrap()
            );
        }
    }
    assert_eq!(
        direct_b.get("/other-tenant/x", None).await.unwrap().count(),
        0,
        "only the tenant moves"
    );
    match c.get("/other-tenant/x", None).await {
        Err(etcd_client::Error::GRpcStatus(s)) => {
            assert_eq!(
                (s.code(), s.message()),
                (tonic::Code::PermissionDenied, "etcdserver: permission denied")
            );
        }
        other => panic!("keys outside the tenant's prefix are not its to read: {other:?}"),
    }

    // Writes after the cutover land in the target only, with revisions above every old one.
    let p = c.put(format!("{TENANT}after"), "1", None).await.unwrap();
    assert!(p.header().unwrap().revision() > last_change_rev);
    assert_eq!(direct_a.get(format!("{TENANT}after"), None).await.unwrap().count(), 0);
    assert_eq!(direct_b.get(format!("{TENANT}after"), None).await.unwrap().count(), 1);

    // I5: keys on a lease that is not kept alive disappear.
    let key = format!("{TENANT}short-lived");
    eventually(
        "the key on the expired lease disappears",
        Duration::from_secs(20),
        || {
            let mut c = c.clone();
            let key = key.clone();
            async move { c.get(key, None).await.map(|r| r.count() == 0).unwrap_or(false) }
        },
    )
    .await;

    let m = proxy.metrics().await;
    assert!(m.contains("cutover_migrations_total{outcome=\"succeeded\"} 1"), "{m}");
}

pub(crate) async fn wait_end(proxy: &Proxy) -> serde_json::Value {
    eventually("the migration ends", Duration::from_secs(60), || async {
        let st = proxy.status().await;
        st["migration"]["outcome"] != "Running" && st["phase"] == "Ready"
    })
    .await;
    proxy.status().await["migration"].clone()
}

/// The failpoint at which a migration can be stopped in `phase` (src/failpoint.rs):
/// the start of the phase, right after the fence write for Fenced, right before the
/// commit Txn for Committing.
pub(crate) fn phase_point(phase: &str) -> &'static str {
    match phase {
        "Preparing" => "migrate.preparing",
        "Copying" => "migrate.copying",
        "CatchingUp" => "migrate.catching_up",
        "Fenced" => "migrate.fence.after_write",
        "Committing" => "migrate.commit.before_send",
        other => panic!("no failpoint for phase {other}"),
    }
}

/// Makes `proxy`'s migrations stop in `phase` (until [`Proxy::release`]).
pub(crate) async fn stop_in(proxy: &Proxy, phase: &str) {
    proxy.failpoint(phase_point(phase), "return(pause)").await;
}

#[tokio::test]
async fn reject_mode_refuses_writes_only_while_fenced() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let proxy = Proxy::start(&two_stores(&a, &b, "fence: {mode: reject}\n")).await;
    let mut c = client(&proxy.endpoint).await;
    c.put(format!("{TENANT}a"), "1", None).await.unwrap();
    stop_in(&proxy, "CatchingUp").await;
    stop_in(&proxy, "Fenced").await;
    let (code, body) = proxy.admin_post("/v1/migrations", json!({"to": "dedicated"})).await;
    assert_eq!(code, 202, "{body}");
    proxy.wait_paused(phase_point("CatchingUp")).await;
    c.put(format!("{TENANT}a"), "2", None)
        .await
        .expect("writes flow while catching up");
    proxy.release(phase_point("CatchingUp")).await;
    proxy.wait_paused(phase_point("Fenced")).await;
    match c.put(format!("{TENANT}a"), "3", None).await {
        Err(etcd_client::Error::GRpcStatus(s)) => {
            assert_eq!(s.code(), tonic::Code::Unavailable);
            assert_eq!(
                s.message(),
                "the current Control Plane is in freezing mode due to a maintenance mode, all the changes are blocked"
            );
        }
        other => panic!("expected the freeze error while fenced, got {other:?}"),
    }
    // Reads are served while fenced (nothing was acknowledged anywhere else yet).
    let got = c.get(format!("{TENANT}a"), None).await.unwrap();
    assert_eq!(got.kvs()[0].value_str().unwrap(), "2");
    proxy.release(phase_point("Fenced")).await;
    let view = wait_end(&proxy).await;
    assert_eq!(view["outcome"], "Succeeded", "{view}");
    c.put(format!("{TENANT}a"), "4", None)
        .await
        .expect("writes flow after the commit");
    let got = c.get(format!("{TENANT}a"), None).await.unwrap();
    assert_eq!(got.kvs()[0].value_str().unwrap(), "4");
    assert_eq!(got.kvs()[0].version(), 3, "the refused write never happened");
    let m = proxy.metrics().await;
    assert!(m.contains("cutover_fenced_writes_total{outcome=\"rejected\"}"), "{m}");
}

/// I6: the target lost in each phase before the commit: the migration fails, the tenant
/// stays on the source with writes flowing (held writes included), nothing is lost; the
/// migration retried afterwards succeeds.
#[tokio::test]
async fn losing_the_target_before_the_commit_leaves_the_tenant_on_the_source() {
    let a = Etcd::start().await;
    let mut b = Etcd::start().await;
    let proxy = Proxy::start(&two_stores(&a, &b, "")).await;
    let mut c = client(&proxy.endpoint).await;
    for i in 0..20 {
        c.put(format!("{TENANT}k{i}"), "v", None).await.unwrap();
    }
    let load = Load::start(&proxy.endpoint).await;
    for phase in ["Preparing", "Copying", "CatchingUp", "Fenced"] {
        stop_in(&proxy, phase).await;
        let (code, body) = proxy
            .admin_post("/v1/migrations", json!({"to": "dedicated", "overwrite": true}))
            .await;
        assert_eq!(code, 202, "{body}");
        proxy.wait_paused(phase_point(phase)).await;
        b.kill();
        proxy.release(phase_point(phase)).await;
        let view = wait_end(&proxy).await;
        assert_eq!(view["outcome"], "Failed", "target lost in {phase}: {view}");
        assert!(view["error"].as_str().is_some_and(|e| !e.is_empty()), "{view}");
        let st = proxy.status().await;
        assert_eq!(st["dataStore"], "default", "target lost in {phase}");
        load.progress(10).await;
        b.relaunch();
        b.wait_ready().await;
    }
    // The target was down when the last attempt failed, so its partial copy is still
    // there, claimed by that attempt: a retry clears it by itself (no --overwrite).
    let (code, body) = proxy.admin_post("/v1/migrations", json!({"to": "dedicated"})).await;
    assert_eq!(code, 202, "{body}");
    let view = wait_end(&proxy).await;
    assert_eq!(view["outcome"], "Succeeded", "the retried migration: {view}");
    assert!(
        proxy
            .log()
            .contains("clearing the partial copy a dead migration of this tenant left"),
        "the retry said what it cleared"
    );
    load.progress(10).await;
    let seen = load.finish().await;
    let after = tenant_state(&proxy.endpoint).await;
    check_load(&seen, &after);
    let m = proxy.metrics().await;
    assert!(m.contains("cutover_migrations_total{outcome=\"failed\"} 4"), "{m}");
}

/// I6: a migrating proxy killed while the source is fenced: the fence is bound to the
/// migration's lease, so it lifts by itself and writes resume on the source.
#[tokio::test]
async fn a_proxy_killed_while_fenced_leaves_the_source_writable_after_the_lease_expires() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let config = two_stores(&a, &b, "migration: {leaseTTL: 2s}\n");
    let mut proxy = Proxy::start(&config).await;
    let mut c = client(&proxy.endpoint).await;
    c.put(format!("{TENANT}a"), "1", None).await.unwrap();
    stop_in(&proxy, "Fenced").await;
    let (code, body) = proxy.admin_post("/v1/migrations", json!({"to": "dedicated"})).await;
    assert_eq!(code, 202, "{body}");
    proxy.wait_paused(phase_point("Fenced")).await;
    proxy.kill();

    let restarted = Proxy::start(&config).await;
    assert_eq!(restarted.status().await["dataStore"], "default");
    let mut c = client(&restarted.endpoint).await;
    // Held until the dead migrator's lease expires, then applied on the source.
    c.put(format!("{TENANT}a"), "2", None)
        .await
        .expect("the write goes through once the fence lifts");
    let mut direct_a = client(&a.endpoint).await;
    assert_eq!(
        direct_a.get(format!("{TENANT}a"), None).await.unwrap().kvs()[0]
            .value_str()
            .unwrap(),
        "2"
    );
}

/// I6: after the commit, a proxy restarted with its old configuration reads the marker and
/// serves from the target, with the same revisions.
#[tokio::test]
async fn a_proxy_restarted_after_the_commit_with_the_old_config_serves_from_the_target() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let config = two_stores(&a, &b, "");
    let mut proxy = Proxy::start(&config).await;
    let mut c = client(&proxy.endpoint).await;
    for i in 0..20 {
        c.put(format!("{TENANT}k{}", i % 7), format!("v{i}"), None)
            .await
            .unwrap();
    }
    let view = migrate(&proxy, "dedicated").await;
    assert_eq!(view["outcome"], "Succeeded", "{view}");
    c.put(format!("{TENANT}after"), "1", None).await.unwrap();
    let before = tenant_state(&proxy.endpoint).await;
    proxy.kill();

    let restarted = Proxy::start(&config).await;
    assert_eq!(restarted.status().await["dataStore"], "dedicated");
    assert_eq!(
        tenant_state(&restarted.endpoint).await,
        before,
        "same keys and revisions after the restart"
    );
    let mut c = client(&restarted.endpoint).await;
    c.put(format!("{TENANT}after"), "2", None).await.unwrap();
    let mut direct_b = client(&b.endpoint).await;
    assert_eq!(
        direct_b.get(format!("{TENANT}after"), None).await.unwrap().kvs()[0]
            .value_str()
            .unwrap(),
        "2"
    );
    let mut direct_a = client(&a.endpoint).await;
    assert_eq!(
        direct_a.get(format!("{TENANT}after"), None).await.unwrap().count(),
        0,
        "nothing reaches the old store"
    );
}

/// Back and on: A -> B -> A, then A -> C; revisions as clients see them never change.
#[tokio::test]
async fn migrations_compose_back_and_on() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let cc = Etcd::start().await;
    let config = format!(
        "prefix: {TENANT}\ndataStore: a\ndataStores:\n  a:\n    endpoints: [\"{}\"]\n  b:\n    endpoints: [\"{}\"]\n  c:\n    endpoints: [\"{}\"]\n",
        a.endpoint, b.endpoint, cc.endpoint
    );
    let proxy = Proxy::start(&config).await;
    let mut c = client(&proxy.endpoint).await;
    for i in 0..30 {
        c.put(format!("{TENANT}k{}", i % 10), format!("v{i}"), None)
            .await
            .unwrap();
    }
    let load = Load::start(&proxy.endpoint).await;
    load.progress(20).await;
    let mut fixed = tenant_state(&proxy.endpoint).await;
    fixed.retain(|k, _| k.contains("/k"));
    let mut k_sizes = Vec::new();
    for (to, cleanup) in [("b", None), ("a", Some("a")), ("c", None)] {
        if let Some(ds) = cleanup {
            // The tenant left `a` when it moved to `b`: clear its old copy first.
            let (code, body) = proxy.admin_post("/v1/cleanup", json!({"datastore": ds})).await;
            assert_eq!(code, 200, "{body}");
        }
        let view = migrate(&proxy, to).await;
        assert_eq!(view["outcome"], "Succeeded", "to {to}: {view}");
        k_sizes.push(crate::keymap::translation_keys(&proxy).await);
        load.progress(20).await;
        let now = tenant_state(&proxy.endpoint).await;
        for (k, v) in &fixed {
            assert_eq!(now.get(k), Some(v), "after the move to {to}: {k}");
        }
    }
    let seen = load.finish().await;
    let after = tenant_state(&proxy.endpoint).await;
    check_load(&seen, &after);
    // K has an entry per key the last hop copied, whatever came before: it never holds
    // more keys than the tenant ever had.
    let ever: std::collections::BTreeSet<&String> = fixed.keys().chain(seen.acked.keys()).chain(after.keys()).collect();
    assert!(
        k_sizes.iter().all(|&k| k > 0 && k as usize <= ever.len()),
        "K after each hop {k_sizes:?}, {} keys ever",
        ever.len()
    );
    // A compare on a revision from the very first store still holds.
    let (k, v) = fixed.iter().next().unwrap();
    let t = c
        .txn(
            Txn::new()
                .when([Compare::mod_revision(k.as_str(), CompareOp::Equal, v.2)])
                .and_then([TxnOp::put(k.as_str(), "last", None)]),
        )
        .await
        .unwrap();
    assert!(t.succeeded());
}

/// A target shared with another tenant, which writes to it during the migration: neither
/// tenant disturbs the other.
#[tokio::test]
async fn a_shared_target_keeps_both_tenants_apart() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let proxy = Proxy::start(&two_stores(&a, &b, "")).await;
    let mut c = client(&proxy.endpoint).await;
    for i in 0..30 {
        c.put(format!("{TENANT}k{i}"), "v", None).await.unwrap();
    }
    // The other tenant lives in `b` already, under its own prefix, and keeps writing.
    let mut other = client(&b.endpoint).await;
    let (stop, stop_rx) = watch::channel(false);
    let writer = tokio::spawn(async move {
        let mut n = 0u64;
        while !*stop_rx.borrow() {
            n += 1;
            other
                .put(format!("/tenant-2/k{}", n % 13), format!("{n}"), None)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        (other, n)
    });
    let load = Load::start(&proxy.endpoint).await;
    load.progress(20).await;
    let view = migrate(&proxy, "dedicated").await;
    assert_eq!(view["outcome"], "Succeeded", "{view}");
    load.progress(20).await;
    let seen = load.finish().await;
    let _ = stop.send(true);
    let (mut other, n) = writer.await.unwrap();
    let after = tenant_state(&proxy.endpoint).await;
    check_load(&seen, &after);
    assert!(
        after.keys().all(|k| k.starts_with(TENANT)),
        "the proxy shows only its tenant"
    );
    let theirs = other
        .get("/tenant-2/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(
        theirs.count(),
        13.min(n as i64),
        "the other tenant's keys are all there"
    );
    let ours_on_b = other
        .get(TENANT, Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .unwrap();
    assert!(ours_on_b.count() >= after.len() as i64);
}

fn cutover(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .output()
        .expect("cutover runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The declarative trigger (a change of `dataStore` in the watched config file) and the
/// CLI (`status`, `migrate --wait`, `abort`, `cleanup`), which finds the admin API and
/// its token through the same file.
#[tokio::test]
async fn the_config_file_and_the_cli_drive_migrations() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let proxy = Proxy::start(&two_stores(&a, &b, "")).await;
    // Each phase lasts a moment (an injected delay), so that `--wait` shows every one.
    for phase in ["Copying", "CatchingUp", "Fenced"] {
        proxy.failpoint(phase_point(phase), "return(sleep:300)").await;
    }
    let mut c = client(&proxy.endpoint).await;
    for i in 0..10 {
        c.put(format!("{TENANT}k{i}"), "v", None).await.unwrap();
    }
    let load = Load::start(&proxy.endpoint).await;
    let path = proxy.config_path();
    let cfg = path.to_str().unwrap();

    let (ok, out) = cutover(&["status", "--config", cfg]);
    assert!(ok, "{out}");
    assert!(out.starts_with("NAME") && out.contains("default"), "{out}");

    // Declarative: the file now names the other datastore.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("dataStore: default", "dataStore: dedicated")).unwrap();
    eventually(
        "the config change moves the tenant",
        Duration::from_secs(30),
        || async {
            let st = proxy.status().await;
            st["dataStore"] == "dedicated" && st["migration"]["outcome"] == "Succeeded"
        },
    )
    .await;
    assert_eq!(proxy.status().await["migration"]["trigger"], "config");

    // Imperative, back: refused without a token, then done and followed with --wait.
    let (ok, out) = cutover(&["migrate", "--to", "default", "--admin", &proxy.admin]);
    assert!(!ok && out.contains("HTTP 401"), "{out}");
    let (ok, out) = cutover(&["migrate", "--to", "default", "--config", cfg]);
    assert!(ok && out.contains("started"), "{out}");
    let view = wait_end(&proxy).await;
    assert_eq!(view["outcome"], "Failed");
    assert!(
        view["error"].as_str().unwrap().contains("--overwrite"),
        "the old copy is still in default: {view}"
    );
    let (ok, out) = cutover(&["cleanup", "--datastore", "dedicated", "--config", cfg]);
    assert!(!ok && out.contains("authoritative"), "{out}");
    let (ok, out) = cutover(&["cleanup", "--datastore", "default", "--config", cfg]);
    assert!(ok && out.contains("deleted"), "{out}");
    let (ok, out) = cutover(&["migrate", "--to", "default", "--wait", "--config", cfg]);
    assert!(ok, "{out}");
    for part in ["started", "NAME", "Copying", "CatchingUp", "Fenced", "Succeeded"] {
        assert!(out.contains(part), "{part} in {out}");
    }
    let (ok, out) = cutover(&["abort", "--config", cfg]);
    assert!(!ok && out.contains("no migration is running"), "{out}");
    let (ok, out) = cutover(&["status", "-o", "json", "--config", cfg]);
    assert!(ok, "{out}");
    let st: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(st["dataStore"], "default");

    load.progress(10).await;
    let seen = load.finish().await;
    check_load(&seen, &tenant_state(&proxy.endpoint).await);
}

/// The source compacted (by someone else) past the copy's pinned revision while the copy
/// runs: the migration copies again from a newer revision instead of failing.
#[tokio::test]
async fn a_source_compaction_during_the_copy_is_survived() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let proxy = Proxy::start(&two_stores(&a, &b, "migration: {pageSize: 1, concurrency: 1}\n")).await;
    let mut c = client(&proxy.endpoint).await;
    for i in 0..400 {
        c.put(format!("{TENANT}k{i:03}"), "v", None).await.unwrap();
    }
    let (code, body) = proxy.admin_post("/v1/migrations", json!({"to": "dedicated"})).await;
    assert_eq!(code, 202, "{body}");
    eventually("the copy is under way", Duration::from_secs(20), || async {
        let st = proxy.status().await;
        st["phase"] == "Copying" && st["migration"]["keysCopied"].as_u64().unwrap_or(0) > 0
    })
    .await;
    let mut direct = client(&a.endpoint).await;
    let rev = direct
        .put(format!("{TENANT}late"), "x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    direct.compact(rev, None).await.unwrap();
    let view = wait_end(&proxy).await;
    assert_eq!(view["outcome"], "Succeeded", "{view}");
    assert!(proxy.log().contains("copying again"), "the copy was restarted");
    let after = tenant_state(&proxy.endpoint).await;
    assert_eq!(after.len(), 401);
    assert_eq!(after[&format!("{TENANT}late")].0, "x");
}

/// A second replica in front of the same datastores follows the commit marker at once:
/// its clients' writes, watch and keep-alive carry on on the target, with no restart.
#[tokio::test]
async fn another_replica_follows_the_commit() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let config = two_stores(&a, &b, "");
    let leader = Proxy::start(&config).await;
    let replica = Proxy::start(&config).await;
    let mut c = client(&replica.endpoint).await;
    for i in 0..20 {
        c.put(format!("{TENANT}k{i}"), "v", None).await.unwrap();
    }
    let load = Load::start(&replica.endpoint).await;
    load.progress(20).await;
    let view = migrate(&leader, "dedicated").await;
    assert_eq!(view["outcome"], "Succeeded", "{view}");
    eventually("the replica follows the marker", Duration::from_secs(10), || async {
        replica.status().await["dataStore"] == "dedicated"
    })
    .await;
    // And its status shows the same migration, with who led it.
    eventually(
        "the replica shows the leader's migration",
        Duration::from_secs(10),
        || async {
            let m = replica.status().await["migration"].clone();
            m["id"] == view["id"] && m["leader"] == view["leader"] && m["outcome"] == "Succeeded"
        },
    )
    .await;
    load.progress(20).await;
    let seen = load.finish().await;
    check_load(&seen, &tenant_state(&replica.endpoint).await);
    assert_eq!(
        tenant_state(&replica.endpoint).await,
        tenant_state(&leader.endpoint).await
    );
}

/// Several replicas: the same config change reaching all of them, or requests to two of
/// them at once, make one migration; the others get a clear answer and follow its commit.
#[tokio::test]
async fn replicas_asked_together_make_one_migration() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let config = two_stores(&a, &b, "");
    let one = Proxy::start(&config).await;
    let two = Proxy::start(&config).await;
    // Preparing lasts a moment on both, so that the two requests meet.
    for p in [&one, &two] {
        p.failpoint("migrate.preparing", "return(sleep:300)").await;
    }
    let mut c = client(&one.endpoint).await;
    for i in 0..20 {
        c.put(format!("{TENANT}k{i}"), "v", None).await.unwrap();
    }
    let load = Load::start(&two.endpoint).await;

    // Declarative: the same ConfigMap change reaches both replicas.
    for p in [&one, &two] {
        let path = p.config_path();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("dataStore: default", "dataStore: dedicated")).unwrap();
    }
    for p in [&one, &two] {
        eventually(
            "both replicas end on the new datastore",
            Duration::from_secs(30),
            || async { p.status().await["dataStore"] == "dedicated" },
        )
        .await;
    }
    let succeeded = |m: &str| m.contains("cutover_migrations_total{outcome=\"succeeded\"} 1");
    let (m1, m2) = (one.metrics().await, two.metrics().await);
    assert!(
        succeeded(&m1) != succeeded(&m2),
        "exactly one replica ran the migration:\n{m1}\n{m2}"
    );
    assert!(
        !m1.contains("outcome=\"failed\"") && !m2.contains("outcome=\"failed\""),
        "no failed migration"
    );

    // Imperative, back to default, asked of both at once (after clearing the old copy).
    let (code, body) = one.admin_post("/v1/cleanup", json!({"datastore": "default"})).await;
    assert_eq!(code, 200, "{body}");
    let ((c1, b1), (c2, b2)) = tokio::join!(
        one.admin_post("/v1/migrations", json!({"to": "default"})),
        two.admin_post("/v1/migrations", json!({"to": "default"})),
    );
    assert!(c1 == 202 || c2 == 202, "{b1} {b2}");
    for (code, body) in [(c1, &b1), (c2, &b2)] {
        if code != 202 {
            assert_eq!(code, 409, "{body}");
            assert!(body["error"].as_str().unwrap().contains("already running"), "{body}");
        }
    }
    for p in [&one, &two] {
        eventually("both replicas end on default", Duration::from_secs(30), || async {
            let st = p.status().await;
            st["dataStore"] == "default" && st["phase"] == "Ready"
        })
        .await;
    }
    let outcomes: Vec<String> = [&one, &two]
        .iter()
        .map(|p| p.log())
        .flat_map(|l| {
            l.lines()
                .filter(|x| x.contains("migration committed"))
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(outcomes.len(), 2, "one commit per direction: {outcomes:?}");
    load.progress(10).await;
    let seen = load.finish().await;
    check_load(&seen, &tenant_state(&two.endpoint).await);
}

/// The leading replica SIGKILLed in each phase before the commit: the fence dies with its
/// lease, the tenant stays on the source, the other replica's clients see no error, and
/// the restarted leader can migrate again.
#[tokio::test]
async fn killing_the_leader_in_any_phase_before_the_commit_leaves_everyone_on_the_source() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let config = two_stores(&a, &b, "migration: {leaseTTL: 2s}\n");
    let mut leader = Proxy::start(&config).await;
    let other = Proxy::start(&config).await;
    let mut c = client(&other.endpoint).await;
    for i in 0..20 {
        c.put(format!("{TENANT}k{i}"), "v", None).await.unwrap();
    }
    let load = Load::start(&other.endpoint).await;
    for phase in ["Preparing", "Copying", "CatchingUp", "Fenced", "Committing"] {
        stop_in(&leader, phase).await;
        start_when_unlocked(&leader).await;
        leader.wait_paused(phase_point(phase)).await;
        leader.kill();
        // The other replica stays on the source and its writes flow (after the fence's
        // lease expires, when it was fenced).
        load.progress(10).await;
        assert_eq!(other.status().await["dataStore"], "default", "leader killed in {phase}");
        leader = Proxy::start(&config).await;
        assert_eq!(leader.status().await["dataStore"], "default");
    }
    // The lock went with the dead leader's lease: a new attempt succeeds.
    eventually("a new migration can start", Duration::from_secs(20), || async {
        leader
            .admin_post("/v1/migrations", json!({"to": "dedicated", "overwrite": true}))
            .await
            .0
            == 202
    })
    .await;
    let view = wait_end(&leader).await;
    assert_eq!(view["outcome"], "Succeeded", "{view}");
    eventually("the other replica follows", Duration::from_secs(10), || async {
        other.status().await["dataStore"] == "dedicated"
    })
    .await;
    load.progress(10).await;
    let seen = load.finish().await;
    check_load(&seen, &tenant_state(&other.endpoint).await);
}

/// A lease whose client stops keeping it alive just as the source is fenced expires while
/// fenced (the fence cannot stop an expiry): its key is gone on the target too, and a
/// watcher sees its delete exactly once. A lease kept alive through the whole migration
/// keeps its key, and answers keep-alives through the proxy after the commit.
#[tokio::test]
async fn a_lease_that_expires_while_fenced_takes_its_key_on_both_sides() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let proxy = Proxy::start(&two_stores(&a, &b, "")).await;
    let mut c = client(&proxy.endpoint).await;
    let dying_key = format!("{TENANT}leases/dying");
    let kept_key = format!("{TENANT}leases/kept");
    let dying = c.lease_grant(2, None).await.unwrap().id();
    let kept = c.lease_grant(5, None).await.unwrap().id();
    let with = |l: i64| Some(etcd_client::PutOptions::new().with_lease(l));
    c.put(dying_key.as_str(), "d", with(dying)).await.unwrap();
    c.put(kept_key.as_str(), "k", with(kept)).await.unwrap();
    let (_watcher, mut events) = c.watch(dying_key.as_str(), None).await.unwrap();

    // Both leases kept alive through the proxy; the dying one only until the fence.
    let fenced = Arc::new(AtomicBool::new(false));
    let keepers: Vec<JoinHandle<()>> = [(dying, true), (kept, false)]
        .into_iter()
        .map(|(id, stops_at_fence)| {
            let (mut c, fenced) = (c.clone(), fenced.clone());
            tokio::spawn(async move {
                let (mut keeper, mut answers) = c.lease_keep_alive(id).await.unwrap();
                while !(stops_at_fence && fenced.load(Ordering::SeqCst)) {
                    keeper.keep_alive().await.unwrap();
                    let answer = answers.message().await.unwrap().unwrap();
                    assert!(answer.ttl() > 0, "lease {id:x} answered TTL {}", answer.ttl());
                    // Pacing: a keep-alive every 300 ms, as a client sends them.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            })
        })
        .collect();

    // The migration stops right after the fence write; the dying lease's client stops
    // there, and the lease expires on the fenced source before the migration goes on.
    stop_in(&proxy, "Fenced").await;
    let (code, body) = proxy.admin_post("/v1/migrations", json!({"to": "dedicated"})).await;
    assert_eq!(code, 202, "{body}");
    proxy.wait_paused(phase_point("Fenced")).await;
    fenced.store(true, Ordering::SeqCst);
    let direct_a = client(&a.endpoint).await;
    eventually("the dying lease expires on the source", Duration::from_secs(10), || {
        let mut direct_a = direct_a.clone();
        let key = dying_key.clone();
        async move { direct_a.get(key.as_str(), None).await.unwrap().count() == 0 }
    })
    .await;
    proxy.release(phase_point("Fenced")).await;
    let view = wait_end(&proxy).await;
    assert_eq!(view["outcome"], "Succeeded", "{view}");
    assert_eq!(proxy.status().await["dataStore"], "dedicated");

    // The dying lease expired on the source while fenced: its key is gone everywhere.
    let mut direct_b = client(&b.endpoint).await;
    assert_eq!(
        direct_b.get(dying_key.as_str(), None).await.unwrap().count(),
        0,
        "on the target"
    );
    assert_eq!(
        c.get(dying_key.as_str(), None).await.unwrap().count(),
        0,
        "through the proxy"
    );
    // The kept one lives on, on the target, and is kept alive through the proxy there.
    let kv = c.get(kept_key.as_str(), None).await.unwrap();
    assert_eq!(kv.kvs().first().map(|kv| kv.lease()), Some(kept), "{kv:?}");
    let ttl = c.lease_time_to_live(kept, None).await.unwrap();
    assert!(ttl.ttl() > 0, "the kept lease after the commit: {ttl:?}");

    // Once every copy of the dying lease on the target is gone, the watcher has seen its
    // delete once: no key resurrected on the target to be deleted again.
    eventually(
        "the target's copy of the dying lease is gone",
        Duration::from_secs(10),
        || {
            let mut direct_b = direct_b.clone();
            async move {
                let leases = direct_b.leases().await.unwrap();
                leases.leases().len() == 1 // the kept lease's copy only
            }
        },
    )
    .await;
    c.put(dying_key.as_str(), "again", None).await.unwrap();
    let mut kinds = Vec::new();
    while kinds.last() != Some(&"put again".to_string()) {
        let resp = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("the watcher's events")
            .unwrap()
            .expect("the watch is open");
        for e in resp.events() {
            let value = e
                .kv()
                .map(|kv| kv.value_str().unwrap_or("").to_string())
                .unwrap_or_default();
            kinds.push(match e.event_type() {
                EventType::Put => format!("put {value}"),
                EventType::Delete => "delete".to_string(),
            });
        }
    }
    assert_eq!(kinds, ["delete", "put again"], "the dying key's events");
    for k in keepers {
        k.abort();
    }
}
