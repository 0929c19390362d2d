//! Three cutover replicas in front of the same datastores (as three kube-apiserver pods,
//! each with its sidecar), a concurrent load through each of them, and faults at every
//! step of a migration: the leading replica or a follower SIGKILLed, a replica cut off
//! from the target, a source member lost. Each load writes under a namespace of its own
//! (`/registry/r<replica>g<generation>/`) and is checked on its own (I1, I2, I4, I5 through
//! `migrate::check_load`); the keys written before the migration are checked on every
//! replica (I3).
//!
//! The load of a replica that is killed is "abandoned" just before the kill: its clients'
//! errors from then on are that death (a kube-apiserver in the same pod would die too),
//! the writes it had in flight have an unknown outcome, and its watch is checked up to
//! where it ended. The restarted replica gets a new load.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde_json::json;

use crate::migrate::{
    check_load_allowing, phase_point, stop_in, tenant_state, two_stores, wait_end, Load, Seen, TenantState, TENANT,
};
use crate::support::{client, eventually, Etcd, Forwarder, Proxy};

/// A migration lease that lets a dead leader's fence lift within two seconds. Tests stop
/// a replica in a phase with that phase's failpoint (`migrate::phase_point`).
const KILLABLE: &str = "migration: {leaseTTL: 2s}\n";

/// Three replicas and their loads.
struct Fleet {
    configs: Vec<String>,
    proxies: Vec<Proxy>,
    /// Each replica's running load, with its namespace.
    loads: Vec<Option<(String, Load)>>,
    generation: usize,
    /// Loads that ended: (which, what they saw).
    finished: Vec<(String, Seen)>,
    /// The tenant's keys written before any migration, as clients saw them.
    seeded: TenantState,
}

/// Two datastores and three replicas with rehearsal delays, so a test can kill one in
/// any phase.
async fn killable_fleet() -> (Etcd, Etcd, Fleet) {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let fleet = Fleet::three(two_stores(&a, &b, KILLABLE)).await;
    (a, b, fleet)
}

impl Fleet {
    /// After a migration to the target: the source untouched since the fence, one more
    /// round of every load, and every load checked.
    async fn end_on_target(self, source: &Etcd) {
        assert_source_untouched_after_the_fence(source).await;
        self.progress_all(10).await;
        self.finish_and_check(0).await;
    }

    /// Three replicas of `config`, their loads running.
    async fn three(config: String) -> Fleet {
        let fleet = Fleet::start(vec![config.clone(), config.clone(), config]).await;
        fleet.progress_all(10).await;
        fleet
    }

    async fn start(configs: Vec<String>) -> Fleet {
        let mut proxies = Vec::new();
        for c in &configs {
            proxies.push(Proxy::start(c).await);
        }
        // Keys with history: several versions, one deleted and created again.
        let mut c = client(&proxies[0].endpoint).await;
        crate::migrate::seed_with_history(&mut c, 40).await;
        let mut seeded = tenant_state(&proxies[0].endpoint).await;
        seeded.retain(|k, _| k.contains("configmaps/"));
        assert_eq!(seeded.len(), 40);
        let mut f = Fleet {
            loads: (0..configs.len()).map(|_| None).collect(),
            configs,
            proxies,
            generation: 0,
            finished: Vec::new(),
            seeded,
        };
        for i in 0..f.proxies.len() {
            f.new_load(i).await;
        }
        f
    }

    async fn new_load(&mut self, i: usize) {
        assert!(self.loads[i].is_none());
        self.generation += 1;
        let ns = format!("r{i}g{}/", self.generation);
        let load = Load::start_in(&self.proxies[i].endpoint, &ns).await;
        self.loads[i] = Some((ns, load));
    }

    /// Waits until the running load of each replica in `which` acknowledged `n` more writes.
    async fn progress(&self, which: &[usize], n: usize) {
        let waits = which
            .iter()
            .filter_map(|&i| self.loads[i].as_ref())
            .map(|(_, l)| l.progress(n));
        futures::future::join_all(waits).await;
    }

    async fn progress_all(&self, n: usize) {
        let all: Vec<usize> = (0..self.proxies.len()).collect();
        self.progress(&all, n).await;
    }

    /// SIGKILL of replica `i`; its load ends with it.
    async fn kill(&mut self, i: usize) {
        let (ns, load) = self.loads[i].take().expect("a load");
        load.abandon();
        self.proxies[i].kill();
        let seen = load.finish().await;
        self.finished.push((format!("replica {i}, {ns}, killed"), seen));
    }

    /// Stops replica `i`'s load cleanly (its proxy lives on).
    async fn stop_load(&mut self, i: usize) {
        let (ns, load) = self.loads[i].take().expect("a load");
        let seen = load.finish().await;
        self.finished.push((format!("replica {i}, {ns}"), seen));
    }

    /// Starts replica `i` again with its config, and a new load through it.
    async fn restart(&mut self, i: usize) {
        self.proxies[i] = Proxy::start(&self.configs[i]).await;
        self.new_load(i).await;
    }

    /// Waits until every replica serves from datastore `ds`.
    async fn all_on(&self, ds: &str) {
        let all: Vec<usize> = (0..self.proxies.len()).collect();
        self.on(&all, ds).await;
    }

    /// Waits until the replicas in `which` serve from datastore `ds`.
    async fn on(&self, which: &[usize], ds: &str) {
        for &i in which {
            let p = &self.proxies[i];
            eventually(
                &format!("replica {i} serves from {ds}"),
                Duration::from_secs(30),
                || async { p.status().await["dataStore"] == ds },
            )
            .await;
        }
    }

    /// Ends every load and checks each (`timeouts`: writes answered "request timed out"
    /// allowed per load); every replica shows the same tenant, with the seeded keys'
    /// revisions unchanged (I3), and a Txn on a pre-migration mod_revision succeeds
    /// through each of them.
    async fn finish_and_check(mut self, timeouts: usize) {
        for i in 0..self.loads.len() {
            if self.loads[i].is_some() {
                self.stop_load(i).await;
            }
        }
        let after = tenant_state(&self.proxies[0].endpoint).await;
        for (name, seen) in &self.finished {
            eprintln!(
                "{name}: {} keys acknowledged, {} writes, {} events, {} of unknown outcome",
                seen.acked.len(),
                seen.acked.values().map(Vec::len).sum::<usize>(),
                seen.events.len(),
                seen.unknown.values().map(Vec::len).sum::<usize>()
            );
            let check = std::panic::AssertUnwindSafe(|| check_load_allowing(seen, &after, timeouts));
            if let Err(e) = std::panic::catch_unwind(check) {
                panic!(
                    "the load of {name}: {}",
                    e.downcast_ref::<String>().cloned().unwrap_or_default()
                );
            }
        }
        for (i, p) in self.proxies.iter().enumerate() {
            let state = tenant_state(&p.endpoint).await;
            assert!(state == after, "replica {i} shows the same tenant as replica 0");
            for (k, v) in &self.seeded {
                assert_eq!(state.get(k), Some(v), "I3 through replica {i}: {k}");
            }
        }
        for (i, p) in self.proxies.iter().enumerate() {
            let key = format!("{TENANT}configmaps/ns/cm-{}", 20 + i);
            let rev = self.seeded[&key].2;
            let t = client(&p.endpoint)
                .await
                .txn(
                    Txn::new()
                        .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)])
                        .and_then([TxnOp::put(key.as_str(), "updated", None)]),
                )
                .await
                .unwrap();
            assert!(
                t.succeeded(),
                "I3 through replica {i}: a Txn on {key}'s pre-migration mod_revision"
            );
        }
    }
}

/// The fence key, where the source holds the lock, fence and "moved" marker values.
fn fence_key() -> String {
    format!("{TENANT}\0cutover/fence")
}

/// I1: after the commit the source holds the "moved" marker and no tenant key changed
/// after the fence was written.
async fn assert_source_untouched_after_the_fence(source: &Etcd) {
    let mut direct = client(&source.endpoint).await;
    let fence = direct.get(fence_key(), None).await.unwrap();
    let marker = fence.kvs().first().expect("the commit marker");
    assert!(
        marker.value_str().unwrap().contains("\"state\":\"moved\""),
        "the commit marker: {:?}",
        marker.value_str()
    );
    let on_source = direct.get(TENANT, Some(GetOptions::new().with_prefix())).await.unwrap();
    for kv in on_source.kvs() {
        let key = kv.key_str().unwrap();
        if !key.contains('\0') {
            assert!(
                kv.mod_revision() < marker.create_revision(),
                "I1: {key} changed on the source (revision {}) after the fence (revision {})",
                kv.mod_revision(),
                marker.create_revision()
            );
        }
    }
}

async fn metric_sum(proxies: &[Proxy], line: &str) -> usize {
    let mut n = 0;
    for p in proxies {
        if p.metrics().await.contains(line) {
            n += 1;
        }
    }
    n
}

/// One migration at a time: two replicas asked at the same moment make one migration
/// (the other gets 409 naming the leader, or starts, loses the lock race and ends
/// `refused`), a third asked while it runs gets 409 naming the leader, every replica
/// shows the same migration, and all three end on the target.
#[tokio::test]
async fn three_replicas_asked_at_once_make_one_migration() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let config = two_stores(&a, &b, "");
    let fleet = Fleet::three(config).await;
    let p = &fleet.proxies;
    // Whoever leads stops when it starts copying, until the checks below are done.
    for r in &p[..2] {
        stop_in(r, "Copying").await;
    }

    let ((c0, b0), (c1, b1)) = tokio::join!(
        p[0].admin_post("/v1/migrations", json!({"to": "dedicated"})),
        p[1].admin_post("/v1/migrations", json!({"to": "dedicated"})),
    );
    assert!(c0 == 202 || c1 == 202, "one of them starts: {c0} {b0} / {c1} {b1}");
    // Who leads, as the replica nobody asked sees it.
    let seen_leader = parking_lot::Mutex::new(String::new());
    eventually(
        "the third replica shows the running migration",
        Duration::from_secs(20),
        || async {
            let st = p[2].status().await;
            let running = st["migration"]["outcome"] == "Running" && st["phase"] != "Preparing";
            if running {
                *seen_leader.lock() = st["migration"]["leader"].as_str().unwrap_or("").to_string();
            }
            running
        },
    )
    .await;
    let leader = seen_leader.into_inner();
    eprintln!("asked at once: {c0} {b0}\n                {c1} {b1}");
    let winner = [(c0, &b0), (c1, &b1)]
        .iter()
        .position(|(c, b)| *c == 202 && b["leader"] == leader.as_str())
        .unwrap_or_else(|| panic!("the leader {leader} is one of the two asked: {b0} {b1}"));
    let loser = 1 - winner;
    let (lc, lb) = [(c0, &b0), (c1, &b1)][loser];
    if lc == 409 {
        let msg = lb["error"].as_str().unwrap_or("");
        assert!(
            msg.contains("already running") && msg.contains(&format!("led by {leader}")),
            "a clear answer naming the leader: {lb}"
        );
    } else {
        assert_eq!(lc, 202, "{lb}");
        eventually(
            "the replica that lost the race says so",
            Duration::from_secs(20),
            || async {
                p[loser]
                    .metrics()
                    .await
                    .contains("cutover_migrations_total{outcome=\"refused\"} 1")
            },
        )
        .await;
    }
    // A third request while it runs: 409, naming the leader.
    let (code, body) = p[2].admin_post("/v1/migrations", json!({"to": "dedicated"})).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("led by {leader}")),
        "{body}"
    );
    // Every replica shows the same migration while it runs.
    let id = p[winner].status().await["migration"]["id"].clone();
    for (i, r) in p.iter().enumerate() {
        eventually(
            &format!("replica {i} shows the migration"),
            Duration::from_secs(20),
            || async {
                let m = r.status().await["migration"].clone();
                m["id"] == id && m["leader"] == leader.as_str()
            },
        )
        .await;
    }

    p[winner].release(phase_point("Copying")).await;
    let view = wait_end(&p[winner]).await;
    assert_eq!(view["outcome"], "Succeeded", "{view}");
    fleet.all_on("dedicated").await;
    for (i, r) in p.iter().enumerate() {
        eventually(
            &format!("replica {i} shows it succeeded"),
            Duration::from_secs(20),
            || async {
                let st = r.status().await;
                st["migration"]["id"] == id && st["migration"]["outcome"] == "Succeeded" && st["phase"] == "Ready"
            },
        )
        .await;
    }
    assert_eq!(
        metric_sum(p, "cutover_migrations_total{outcome=\"succeeded\"} 1").await,
        1,
        "exactly one replica ran the migration"
    );
    assert_eq!(
        metric_sum(p, "cutover_migrations_total{outcome=\"failed\"}").await,
        0,
        "no migration failed"
    );
    fleet.end_on_target(&a).await;
}

/// The leading replica SIGKILLed in each phase before the commit marker, a different
/// replica leading each time: everyone stays on the source and the survivors' writes flow
/// (once the dead leader's fence lease expires); the restarted replica serves from the
/// source; then another replica migrates and all three follow.
#[tokio::test]
async fn killing_the_leading_replica_before_the_commit_marker_leaves_all_three_on_the_source() {
    let (a, _b, mut fleet) = killable_fleet().await;
    let phases = ["Preparing", "Copying", "CatchingUp", "Fenced", "Committing"];
    for (round, phase) in phases.iter().enumerate() {
        let l = round % 3;
        let survivors: Vec<usize> = (0..3).filter(|&i| i != l).collect();
        let leader = &fleet.proxies[l];
        stop_in(leader, phase).await;
        crate::migrate::start_when_unlocked(leader).await;
        leader.wait_paused(phase_point(phase)).await;
        fleet.kill(l).await;
        // Writes flow through the others (after the fence's lease expired, if fenced).
        fleet.progress(&survivors, 10).await;
        for &i in &survivors {
            assert_eq!(
                fleet.proxies[i].status().await["dataStore"],
                "default",
                "replica {i} after the leader was killed in {phase}"
            );
        }
        let mut direct = client(&a.endpoint).await;
        let fence = direct.get(fence_key(), None).await.unwrap();
        assert_eq!(fence.count(), 0, "no fence or marker left in the source after {phase}");
        fleet.restart(l).await;
        assert_eq!(fleet.proxies[l].status().await["dataStore"], "default");
        fleet.progress_all(5).await;
    }
    // The lock went with the dead leader's lease: another replica migrates, while the
    // killed replicas' abandoned leases expire on the source and the killed attempts'
    // copies linger on the target.
    let l = phases.len() % 3;
    let leader = &fleet.proxies[l];
    let started = std::sync::Mutex::new(serde_json::Value::Null);
    eventually("a new migration can start", Duration::from_secs(20), || async {
        let (code, body) = leader
            .admin_post("/v1/migrations", json!({"to": "dedicated", "overwrite": true}))
            .await;
        *started.lock().unwrap() = body;
        code == 202
    })
    .await;
    let started = started.into_inner().unwrap();
    let view = wait_end(leader).await;
    assert_eq!(
        view["id"], started["id"],
        "the leader shows the migration it started: {view}"
    );
    assert_eq!(view["outcome"], "Succeeded", "{view}");
    fleet.all_on("dedicated").await;
    fleet.end_on_target(&a).await;
}

/// The leading replica SIGKILLed right after it wrote the commit marker, before it
/// switched: the two others follow the marker, the restarted one serves from the target,
/// every replica's status says the migration is over, and a later migration (back) works.
#[tokio::test]
async fn killing_the_leading_replica_right_after_the_commit_marker_moves_all_three_to_the_target() {
    let (a, _b, mut fleet) = killable_fleet().await;
    // The leader stops right after the commit marker, before its own switch: lease, lock
    // and final status are still to do when it is killed there.
    fleet.proxies[0].failpoint("migrate.switch", "return(pause)").await;
    let (code, body) = fleet.proxies[0]
        .admin_post("/v1/migrations", json!({"to": "dedicated"}))
        .await;
    assert_eq!(code, 202, "{body}");
    fleet.proxies[0].wait_paused("migrate.switch").await;
    let r = client(&a.endpoint).await.get(fence_key(), None).await.unwrap();
    assert!(
        r.kvs()
            .first()
            .is_some_and(|kv| kv.value_str().unwrap_or("").contains("\"state\":\"moved\"")),
        "the commit marker is in the source"
    );
    fleet.kill(0).await;
    fleet.on(&[1, 2], "dedicated").await;
    fleet.progress(&[1, 2], 10).await;
    fleet.restart(0).await;
    assert_eq!(fleet.proxies[0].status().await["dataStore"], "dedicated");
    fleet.progress_all(10).await;
    assert_source_untouched_after_the_fence(&a).await;

    // Status on every replica: no migration is running any more (the marker says it
    // committed). Checked within 20 s, reported at the end of the test.
    let mut problems = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for (i, p) in fleet.proxies.iter().enumerate() {
        loop {
            let st = p.status().await;
            if st["phase"] == "Ready" && st["migration"]["outcome"] != "Running" {
                break;
            }
            if std::time::Instant::now() > deadline {
                problems.push(format!(
                    "replica {i}: 20 s after the commit its status still shows a running migration: phase {}, migration {}",
                    st["phase"], st["migration"]
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Not wedged: the dead leader's lock went with its lease; another replica migrates back
    // at once, while the leases the tenant left on the old source are still there and the
    // killed replica's abandoned lease expires on the current one.
    let (code, body) = fleet.proxies[1]
        .admin_post("/v1/cleanup", json!({"datastore": "default"}))
        .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = fleet.proxies[1]
        .admin_post("/v1/migrations", json!({"to": "default"}))
        .await;
    assert_eq!(code, 202, "{body}");
    let view = wait_end(&fleet.proxies[1]).await;
    assert_eq!(view["outcome"], "Succeeded", "{view}");
    fleet.all_on("default").await;
    fleet.progress_all(10).await;
    fleet.finish_and_check(0).await;
    assert!(problems.is_empty(), "{problems:#?}");
}

/// A follower (not the leading replica) SIGKILLed while the source is fenced, and while
/// the leader commits: the leader completes, the third replica follows, and the restarted
/// follower serves from the target (its status and its reads).
#[tokio::test]
async fn killing_a_follower_while_fenced_or_committing_does_not_stop_the_migration() {
    for phase in ["Fenced", "Committing"] {
        let (a, _b, mut fleet) = killable_fleet().await;
        stop_in(&fleet.proxies[0], phase).await;
        let (code, body) = fleet.proxies[0]
            .admin_post("/v1/migrations", json!({"to": "dedicated"}))
            .await;
        assert_eq!(code, 202, "{body}");
        fleet.proxies[0].wait_paused(phase_point(phase)).await;
        fleet.kill(1).await;
        fleet.proxies[0].release(phase_point(phase)).await;
        let view = wait_end(&fleet.proxies[0]).await;
        assert_eq!(view["outcome"], "Succeeded", "follower killed in {phase}: {view}");
        eventually("replica 2 follows", Duration::from_secs(20), || async {
            fleet.proxies[2].status().await["dataStore"] == "dedicated"
        })
        .await;
        fleet.restart(1).await;
        let st = fleet.proxies[1].status().await;
        assert_eq!(
            st["dataStore"], "dedicated",
            "the restarted follower (killed in {phase})"
        );
        // Reads through it see the target's data: the keys from before the migration with
        // their revisions, and a key written through the leader after the commit.
        let state = tenant_state(&fleet.proxies[1].endpoint).await;
        for (k, v) in &fleet.seeded {
            assert_eq!(state.get(k), Some(v), "I3 through the restarted follower: {k}");
        }
        let key = format!("{TENANT}after/{phase}");
        let put = client(&fleet.proxies[0].endpoint)
            .await
            .put(key.as_str(), "1", None)
            .await
            .unwrap();
        let got = client(&fleet.proxies[1].endpoint)
            .await
            .get(key.as_str(), None)
            .await
            .unwrap();
        let kv = got
            .kvs()
            .first()
            .expect("the key written through the leader after the commit");
        assert_eq!(kv.mod_revision(), put.header().unwrap().revision());
        assert_eq!(
            client(&a.endpoint).await.get(key.as_str(), None).await.unwrap().count(),
            0,
            "written in the target only"
        );
        fleet.progress_all(10).await;
        assert_source_untouched_after_the_fence(&a).await;
        fleet.finish_and_check(0).await;
    }
}

/// HTTP status of /readyz.
async fn readyz(p: &Proxy) -> u16 {
    reqwest::get(format!("{}/readyz", p.admin))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// The replica-2 config of the network-fault tests: the target through `fwd`.
fn through(a: &Etcd, fwd: &Forwarder, extra: &str) -> String {
    format!(
        "{extra}prefix: {TENANT}\ndataStore: default\ndataStores:\n  default:\n    endpoints: [\"{}\"]\n  dedicated:\n    endpoints: [\"{}\"]\n",
        a.endpoint, fwd.addr
    )
}

/// The cut replica 2 of `fleet`: a write through it fails and lands nowhere, and a key
/// written through replica 0 after the commit (returned) is never read stale through it.
async fn cut_replica_serves_nothing_stale(
    fleet: &Fleet,
    a: &Etcd,
    b: &Etcd,
    label: &str,
    problems: &mut Vec<String>,
) -> String {
    let cut = &fleet.proxies[2];
    write_fails_and_lands_nowhere(cut, a, b, &format!("{TENANT}cut/{label}"), problems).await;
    let fresh = format!("{TENANT}cut/fresh");
    client(&fleet.proxies[0].endpoint)
        .await
        .put(fresh.as_str(), "new", None)
        .await
        .unwrap();
    read_is_not_stale(cut, &fresh, "new", problems).await;
    fresh
}

/// A write through `p` that must fail, and be in neither datastore.
async fn write_fails_and_lands_nowhere(p: &Proxy, a: &Etcd, b: &Etcd, key: &str, problems: &mut Vec<String>) {
    let mut c = client(&p.endpoint).await;
    match tokio::time::timeout(Duration::from_secs(30), c.put(key, "cut", None)).await {
        Ok(Ok(r)) => problems.push(format!("a write through the cut replica succeeded: {r:?}")),
        Ok(Err(e)) => eprintln!("the write through the cut replica failed, as it must: {e}"),
        Err(_) => problems.push("a write through the cut replica got no answer in 30 s".into()),
    }
    for (name, ds) in [("source", a), ("target", b)] {
        let n = client(&ds.endpoint).await.get(key, None).await.unwrap().count();
        if n != 0 {
            problems.push(format!("the refused write is in the {name}"));
        }
    }
}

/// A read through `p` of a key written on the target after the commit: an error, or the
/// current value, but never the source's stale one.
async fn read_is_not_stale(p: &Proxy, key: &str, want: &str, problems: &mut Vec<String>) {
    let mut c = client(&p.endpoint).await;
    match tokio::time::timeout(Duration::from_secs(30), c.get(key, None)).await {
        Ok(Ok(r)) => {
            let got = r.kvs().first().map(|kv| kv.value_str().unwrap().to_string());
            if got.as_deref() != Some(want) {
                problems.push(format!(
                    "a read through the cut replica answered {got:?} (the source's stale data), not {want:?}"
                ));
            }
        }
        Ok(Err(e)) => eprintln!("a read through the cut replica failed: {e}"),
        Err(_) => problems.push("a read through the cut replica got no answer in 30 s".into()),
    }
}

/// A replica that loses its connections to the target after the commit goes not-ready,
/// and its writes fail rather than land anywhere; restored, it is ready and serves again.
#[tokio::test]
async fn a_replica_cut_from_the_target_after_the_commit_goes_not_ready_and_writes_nowhere() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let mut fwd = Forwarder::start(&b.endpoint);
    let config = two_stores(&a, &b, "");
    let mut fleet = Fleet::start(vec![config.clone(), config, through(&a, &fwd, "")]).await;
    fleet.progress_all(10).await;
    let (code, body) = fleet.proxies[0]
        .admin_post("/v1/migrations", json!({"to": "dedicated"}))
        .await;
    assert_eq!(code, 202, "{body}");
    let view = wait_end(&fleet.proxies[0]).await;
    assert_eq!(view["outcome"], "Succeeded", "{view}");
    fleet.all_on("dedicated").await;
    fleet.progress_all(10).await;
    assert_eq!(readyz(&fleet.proxies[2]).await, 200);

    // Its clients necessarily see the cut: end its load before.
    fleet.stop_load(2).await;
    fwd.cut();
    let cut = &fleet.proxies[2];
    eventually("the cut replica is not ready", Duration::from_secs(15), || async {
        readyz(cut).await != 200
    })
    .await;
    let mut problems = Vec::new();
    let fresh = cut_replica_serves_nothing_stale(&fleet, &a, &b, "after-commit", &mut problems).await;
    assert!(problems.is_empty(), "{problems:#?}");
    // The others never noticed.
    fleet.progress(&[0, 1], 10).await;

    fwd.restore();
    eventually("the replica is ready again", Duration::from_secs(15), || async {
        readyz(cut).await == 200
    })
    .await;
    client(&cut.endpoint)
        .await
        .put(fresh.as_str(), "again", None)
        .await
        .unwrap();
    assert_eq!(
        client(&b.endpoint).await.get(fresh.as_str(), None).await.unwrap().kvs()[0]
            .value_str()
            .unwrap(),
        "again"
    );
    assert_eq!(
        client(&a.endpoint)
            .await
            .get(fresh.as_str(), None)
            .await
            .unwrap()
            .count(),
        0
    );
    client(&cut.endpoint).await.delete(fresh.as_str(), None).await.unwrap();
    fleet.new_load(2).await;
    fleet.progress_all(10).await;
    assert_source_untouched_after_the_fence(&a).await;
    fleet.finish_and_check(0).await;
}

/// A replica cut from the target before the commit (while the leader catches up): the
/// migration commits, and that replica, which cannot follow the marker, must not be ready,
/// must not serve the source's stale data, and must refuse writes; restored, it follows
/// the marker and serves from the target.
#[tokio::test]
async fn a_replica_cut_from_the_target_before_the_commit_cannot_follow_and_is_not_ready() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let mut fwd = Forwarder::start(&b.endpoint);
    let config = two_stores(&a, &b, "");
    let cut_config = through(&a, &fwd, "");
    let mut fleet = Fleet::start(vec![config.clone(), config, cut_config]).await;
    fleet.progress_all(10).await;
    stop_in(&fleet.proxies[0], "CatchingUp").await;
    let (code, body) = fleet.proxies[0]
        .admin_post("/v1/migrations", json!({"to": "dedicated"}))
        .await;
    assert_eq!(code, 202, "{body}");
    fleet.proxies[0].wait_paused(phase_point("CatchingUp")).await;
    fleet.stop_load(2).await;
    fwd.cut();
    fleet.proxies[0].release(phase_point("CatchingUp")).await;
    let view = wait_end(&fleet.proxies[0]).await;
    assert_eq!(view["outcome"], "Succeeded", "{view}");
    eventually("replica 1 follows", Duration::from_secs(20), || async {
        fleet.proxies[1].status().await["dataStore"] == "dedicated"
    })
    .await;
    fleet.progress(&[0, 1], 10).await;

    let cut = &fleet.proxies[2];
    let mut problems = Vec::new();
    let fresh = cut_replica_serves_nothing_stale(&fleet, &a, &b, "before-commit", &mut problems).await;
    let stale = format!("{TENANT}configmaps/ns/cm-0");
    client(&fleet.proxies[0].endpoint)
        .await
        .put(stale.as_str(), "after-commit", None)
        .await
        .unwrap();
    read_is_not_stale(cut, &stale, "after-commit", &mut problems).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut ready = readyz(cut).await;
    while ready == 200 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ready = readyz(cut).await;
    }
    if ready == 200 {
        let st = cut.status().await;
        problems.push(format!(
            "/readyz still answers 200 ten seconds after the commit, while the replica cannot reach the target (status dataStore {}, phase {})",
            st["dataStore"], st["phase"]
        ));
    }
    // The same replica restarted (same config) while still cut from the target.
    fleet.proxies[2].kill();
    fleet.proxies[2] = Proxy::launch(&fleet.configs[2], &[]);
    let cut = &fleet.proxies[2];
    eventually(
        "the restarted replica answers /healthz",
        Duration::from_secs(20),
        || async {
            reqwest::get(format!("{}/healthz", cut.admin))
                .await
                .is_ok_and(|r| r.status().is_success())
        },
    )
    .await;
    read_is_not_stale(cut, &stale, "after-commit", &mut problems).await;
    write_fails_and_lands_nowhere(cut, &a, &b, &format!("{TENANT}cut/after-restart"), &mut problems).await;
    if readyz(cut).await == 200 {
        let st = cut.status().await;
        problems.push(format!(
            "restarted while cut from the target, /readyz answers 200 (status dataStore {}, phase {})",
            st["dataStore"], st["phase"]
        ));
    }
    assert!(problems.is_empty(), "{problems:#?}");

    fwd.restore();
    eventually(
        "the replica follows the marker once restored",
        Duration::from_secs(20),
        || async { cut.status().await["dataStore"] == "dedicated" && readyz(cut).await == 200 },
    )
    .await;
    client(&cut.endpoint).await.delete(fresh.as_str(), None).await.unwrap();
    fleet.new_load(2).await;
    fleet.progress_all(10).await;
    assert_source_untouched_after_the_fence(&a).await;
    fleet.seeded.remove(&stale);
    fleet.finish_and_check(0).await;
}

/// Which member of a cluster leads raft.
async fn raft_leader(members: &[Etcd]) -> usize {
    let s = client(&members[0].endpoint).await.status().await.unwrap();
    let leader = s.leader();
    for (i, m) in members.iter().enumerate() {
        let s = client(&m.endpoint).await.status().await.unwrap();
        if s.header().unwrap().member_id() == leader {
            return i;
        }
    }
    panic!("no member leads");
}

/// A 3-member source loses the member every replica uses (a raft follower, their first
/// endpoint) while the leader copies: the migration goes on and succeeds, or fails
/// cleanly (everyone on the source) and a retry succeeds. Writes in flight on the lost
/// member may be answered "request timed out", as etcd itself answers; nothing else fails.
#[tokio::test]
async fn losing_a_source_member_while_copying_is_survived_or_retried() {
    let mut members = Etcd::cluster(3).await;
    let b = Etcd::start().await;
    let l = raft_leader(&members).await;
    let victim = (l + 1) % 3;
    let other = (l + 2) % 3;
    let config = format!(
        "prefix: {TENANT}\nmigration: {{pageSize: 10, concurrency: 1}}\ndataStore: default\ndataStores:\n  default:\n    endpoints: [\"{}\", \"{}\", \"{}\"]\n  dedicated:\n    endpoints: [\"{}\"]\n",
        members[victim].endpoint, members[other].endpoint, members[l].endpoint, b.endpoint
    );
    let fleet = Fleet::start(vec![config.clone(), config.clone(), config]).await;
    // Enough keys for the copy (ten keys per page) to take a moment, but less than the
    // load's lease TTL (see `a_copy_longer_than_a_lease_ttl_keeps_the_keys_on_that_lease`).
    let mut c = client(&fleet.proxies[0].endpoint).await;
    for i in 0..300 {
        c.put(format!("{TENANT}secrets/ns/s-{i:03}"), "v", None).await.unwrap();
    }
    fleet.progress_all(10).await;
    // The copy stops after five pages; the member is lost there.
    fleet.proxies[0]
        .failpoint("migrate.copy.page", "5*off->return(pause)")
        .await;
    let (code, body) = fleet.proxies[0]
        .admin_post("/v1/migrations", json!({"to": "dedicated"}))
        .await;
    assert_eq!(code, 202, "{body}");
    fleet.proxies[0].wait_paused("migrate.copy.page").await;
    members[victim].kill();
    fleet.proxies[0].release("migrate.copy.page").await;
    let view = wait_end(&fleet.proxies[0]).await;
    eprintln!("the migration with a source member lost while copying: {view}");
    if view["outcome"] != "Succeeded" {
        assert_eq!(view["outcome"], "Failed", "{view}");
        assert!(view["error"].as_str().is_some_and(|e| !e.is_empty()), "{view}");
        for (i, p) in fleet.proxies.iter().enumerate() {
            assert_eq!(
                p.status().await["dataStore"],
                "default",
                "replica {i} after the failure"
            );
        }
        fleet.progress_all(10).await;
        let (code, body) = fleet.proxies[1]
            .admin_post("/v1/migrations", json!({"to": "dedicated", "overwrite": true}))
            .await;
        assert_eq!(code, 202, "{body}");
        let view = wait_end(&fleet.proxies[1]).await;
        assert_eq!(view["outcome"], "Succeeded", "the retry: {view}");
    }
    fleet.all_on("dedicated").await;
    fleet.progress_all(10).await;
    let after = tenant_state(&fleet.proxies[2].endpoint).await;
    assert_eq!(
        after.keys().filter(|k| k.contains("secrets/")).count(),
        300,
        "every copied key is on the target"
    );
    // Each of a load's four writers can have one write in flight on the lost member.
    fleet.finish_and_check(4).await;
}

/// A copy that takes longer than the TTL of a lease that clients keep alive: the target's
/// copy of the lease (granted when the copy starts) must live on until the migration
/// keeps it alive with the source's, or the keys on it vanish from the target.
#[tokio::test]
async fn a_copy_longer_than_a_lease_ttl_keeps_the_keys_on_that_lease() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let proxy = Proxy::start(&two_stores(&a, &b, "migration: {pageSize: 1, concurrency: 1}\n")).await;
    let mut c = client(&proxy.endpoint).await;
    for i in 0..1200 {
        c.put(format!("{TENANT}secrets/ns/s-{i:03}"), "v", None).await.unwrap();
    }
    let load = Load::start_in(&proxy.endpoint, "load/").await;
    load.progress(10).await;
    // A lease of 2 s kept alive through the proxy, with a key on it that sorts first, so
    // that the copy reaches it (and copies the lease) at its very start.
    let lease = c.lease_grant(2, None).await.unwrap().id();
    let holder = format!("{TENANT}aaa/holder");
    c.put(
        holder.as_str(),
        "alive",
        Some(etcd_client::PutOptions::new().with_lease(lease)),
    )
    .await
    .unwrap();
    let (mut keeper, mut answers) = c.lease_keep_alive(lease).await.unwrap();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let keeping = tokio::spawn(async move {
        loop {
            keeper.keep_alive().await.expect("keep-alive sent");
            let r = answers
                .message()
                .await
                .expect("keep-alive answered")
                .expect("an answer");
            assert!(r.ttl() > 0, "the lease is alive");
            // Pacing: a keep-alive every 500 ms, as a client sends them.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stopped.changed() => return,
            }
        }
    });
    let (code, body) = proxy.admin_post("/v1/migrations", json!({"to": "dedicated"})).await;
    assert_eq!(code, 202, "{body}");
    let view = wait_end(&proxy).await;
    let started = view["startedUnixMs"].as_u64().unwrap_or(0);
    let finished = view["finishedUnixMs"].as_u64().unwrap_or(0);
    eprintln!("migration took {} ms: {view}", finished.saturating_sub(started));
    assert_eq!(view["outcome"], "Succeeded", "{view}");
    load.progress(10).await;
    let _ = stop.send(true);
    keeping.await.expect("the lease was kept alive throughout");
    let seen = load.finish().await;
    let after = tenant_state(&proxy.endpoint).await;
    assert_eq!(
        after.get(&holder).map(|v| v.0.as_str()),
        Some("alive"),
        "I5: the key on the kept-alive lease"
    );
    crate::migrate::check_load(&seen, &after);
}

/// A migration refused because another replica's took the lock first publishes nothing:
/// every replica, the refused one included, shows the migration that holds the lock.
/// (It used to publish its own views, running and then refused, over the winner's, and
/// the replicas showed the loser's refusal while the winner ran.)
#[tokio::test]
async fn a_migration_refused_at_the_lock_does_not_hide_the_one_that_holds_it() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let fleet = Fleet::three(two_stores(&a, &b, "")).await;
    let p = &fleet.proxies;
    // Replica 1 starts first and waits before taking the lock.
    p[1].failpoint("migrate.prepare.before_lock", "return(pause)").await;
    let (code, loser) = p[1].admin_post("/v1/migrations", json!({"to": "dedicated"})).await;
    assert_eq!(code, 202, "{loser}");
    p[1].wait_paused("migrate.prepare.before_lock").await;
    // Replica 0 starts meanwhile, takes the lock, and stops when it starts copying.
    stop_in(&p[0], "Copying").await;
    let (code, winner) = p[0].admin_post("/v1/migrations", json!({"to": "dedicated"})).await;
    assert_eq!(code, 202, "{winner}");
    p[0].wait_paused(phase_point("Copying")).await;
    eventually(
        "replica 2 shows replica 0's migration copying",
        Duration::from_secs(10),
        || async {
            let st = p[2].status().await;
            st["migration"]["id"] == winner["id"] && st["phase"] == "Copying"
        },
    )
    .await;
    // Replica 1 goes on, finds the lock taken, and is refused.
    p[1].release("migrate.prepare.before_lock").await;
    eventually("replica 1's migration is refused", Duration::from_secs(20), || async {
        p[1].metrics()
            .await
            .contains("cutover_migrations_total{outcome=\"refused\"} 1")
    })
    .await;
    for (i, r) in p.iter().enumerate() {
        eventually(
            &format!("replica {i} shows the running migration of replica 0"),
            Duration::from_secs(10),
            || async {
                let st = r.status().await;
                st["migration"]["id"] == winner["id"] && st["migration"]["outcome"] == "Running"
            },
        )
        .await;
    }
    p[0].release(phase_point("Copying")).await;
    let view = wait_end(&p[0]).await;
    assert_eq!(view["outcome"], "Succeeded", "{view}");
}

/// A replica that finds another's migration orphaned (its leader died, the lock expired)
/// records it as failed and shows it; if a migration starts on that replica meanwhile,
/// the replica shows its own, not the dead one's end. Held at `migrate.status.adopt`
/// between reading the orphan and showing it, the replica is asked to migrate, and the
/// migration runs to its end before the replica goes on: before the fix, its status then
/// showed the dead leader's "leader lost" (phase Ready) in place of its own migration.
#[tokio::test]
async fn a_migration_started_while_another_is_found_orphaned_shows_its_own_view() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let config = two_stores(&a, &b, KILLABLE);
    let mut first = Proxy::start(&config).await;
    let second = Proxy::start(&config).await;
    crate::migrate::seed_with_history(&mut client(&first.endpoint).await, 10).await;

    stop_in(&first, "CatchingUp").await;
    let (code, body) = first.admin_post("/v1/migrations", json!({"to": "dedicated"})).await;
    assert_eq!(code, 202, "{body}");
    first.wait_paused(phase_point("CatchingUp")).await;
    eventually(
        "the second replica shows the first one's migration",
        Duration::from_secs(10),
        || async { second.status().await["migration"]["id"] == body["id"] },
    )
    .await;
    second.failpoint("migrate.status.adopt", "return(pause)").await;
    first.kill();
    // The lock expires with the dead leader's lease; the second replica records the end.
    second.wait_paused("migrate.status.adopt").await;
    let (code, mine) = second
        .admin_post("/v1/migrations", json!({"to": "dedicated", "overwrite": true}))
        .await;
    assert_eq!(code, 202, "{mine}");
    // The new migration runs to its end while the follower is still held with the old
    // view in hand; only then does the follower go on.
    eventually("the replica's own migration ends", Duration::from_secs(60), || async {
        let m = second.status().await["migration"].clone();
        m["id"] == mine["id"] && m["outcome"] != "Running"
    })
    .await;
    second.release("migrate.status.adopt").await;
    eventually("the follower has gone on", Duration::from_secs(10), || async {
        second.failpoint_state("migrate.status.adopt").await.1 == 0
    })
    .await;
    let view = wait_end(&second).await;
    assert_eq!(view["id"], mine["id"], "the replica shows the migration it ran: {view}");
    assert_eq!(view["outcome"], "Succeeded", "{view}");
    assert_eq!(second.status().await["dataStore"], "dedicated");
}
