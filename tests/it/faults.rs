//! Faults injected at named points (src/failpoint.rs) of the migration and the data path,
//! each with the outcome it must have (I6: every replica on the source with writes
//! flowing, or every replica on the target; nothing acknowledged lost). These tests need
//! a build with the `failpoints` feature (`make it` has it).

use std::time::{Duration, Instant};

use etcd_client::{EventType, GetOptions, WatchOptions};

use crate::migrate::{migrate, seed_with_history, tenant_state, two_stores, Load, TENANT};
use crate::support::{client, eventually, Etcd, Proxy};

/// A gauge the proxy exports (0 when absent).
async fn gauge(p: &Proxy, name: &str) -> i64 {
    let text = p.metrics().await;
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The gauge a proxy exports for requests waiting on a store the tenant left.
async fn held_reads(p: &Proxy) -> i64 {
    gauge(p, "cutover_held_reads").await
}

/// A replica that has seen the commit marker but not switched yet (stopped at the point
/// where it would) must not answer a linearizable read from the store the tenant left
/// once a write was acknowledged on the new one: the read waits for the switch and then
/// sees the write, with a header revision at least the write's.
#[tokio::test]
async fn a_replica_that_has_not_switched_never_answers_a_read_from_the_store_the_tenant_left() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let config = two_stores(&a, &b, "");
    let leader = Proxy::start(&config).await;
    let late = Proxy::start(&config).await;
    let key = format!("{TENANT}configmaps/ns/stale");
    let mut c1 = client(&leader.endpoint).await;
    let mut c2 = client(&late.endpoint).await;
    c1.put(key.as_str(), "before", None).await.unwrap();

    late.failpoint("follower.switch", "return(pause)").await;
    let view = migrate(&leader, "dedicated").await;
    assert_eq!(view["outcome"], "Succeeded", "{view}");
    late.wait_paused("follower.switch").await;
    assert_eq!(
        late.status().await["dataStore"],
        "default",
        "the late replica has not switched"
    );

    let written = c1.put(key.as_str(), "after", None).await.unwrap();
    let written_rev = written.header().unwrap().revision();
    let read = tokio::spawn(async move { c2.get(key.as_str(), None).await });

    // The read must not be answered before the late replica switches: it is held.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if read.is_finished() {
            let r = read.await.unwrap().unwrap();
            let kv = r.kvs().first().expect("the key");
            panic!(
                "the late replica answered from the store the tenant left: value {:?} at header revision {}, \
                 after a write of \"after\" was acknowledged at revision {written_rev}",
                kv.value_str().unwrap(),
                r.header().unwrap().revision()
            );
        }
        if held_reads(&late).await > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the read was neither answered nor held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    late.release("follower.switch").await;
    let r = read
        .await
        .unwrap()
        .expect("the held read is answered once the replica switches");
    assert_eq!(r.kvs()[0].value_str().unwrap(), "after");
    assert!(
        r.header().unwrap().revision() >= written_rev,
        "I2: header revision {} after the write's {written_rev}",
        r.header().unwrap().revision()
    );
    assert_eq!(late.status().await["dataStore"], "dedicated");
}

/// The gauge a proxy exports for watch responses waiting on a store the tenant left.
async fn held_watch_responses(p: &Proxy) -> i64 {
    gauge(p, "cutover_held_watch_responses").await
}

/// One watch event as a client saw it: put?, key, value, mod revision, prev value.
type SeenEvent = (bool, String, String, i64, Option<String>);

/// A replica that has not switched after a commit still has its watches open on the store
/// the tenant left. A later migration back to that store clears the tenant's range there
/// (and copies into it): those writes are cutover's own and must never reach a client as
/// events. The late replica must hold them until it has switched; its watcher then sees
/// exactly the tenant's own writes. Found by the soak (seed 0x534a3615164d987e: deletes of
/// every key between two eras).
#[tokio::test]
async fn a_replica_that_has_not_switched_never_forwards_what_a_later_migration_writes_on_the_store_the_tenant_left() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let config = two_stores(&a, &b, "");
    let leader = Proxy::start(&config).await;
    let late = Proxy::start(&config).await;
    let mut c1 = client(&leader.endpoint).await;
    seed_with_history(&mut c1, 20).await;

    let seen: std::sync::Arc<parking_lot::Mutex<Vec<SeenEvent>>> = Default::default();
    let mut w = client(&late.endpoint).await;
    let (_watcher, mut stream) = w
        .watch(TENANT, Some(WatchOptions::new().with_prefix().with_prev_key()))
        .await
        .unwrap();
    let collect = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = stream.message().await {
                for e in r.events() {
                    let kv = e.kv().unwrap();
                    seen.lock().push((
                        e.event_type() == EventType::Put,
                        kv.key_str().unwrap().to_string(),
                        kv.value_str().unwrap().to_string(),
                        kv.mod_revision(),
                        e.prev_kv().map(|p| p.value_str().unwrap().to_string()),
                    ));
                }
            }
        })
    };

    late.failpoint("follower.switch", "return(pause)").await;
    let view = migrate(&leader, "dedicated").await;
    assert_eq!(view["outcome"], "Succeeded", "{view}");
    late.wait_paused("follower.switch").await;

    // Back to A, stopped once Preparing has cleared the tenant's old copy there.
    leader.failpoint("migrate.copying", "return(pause)").await;
    let (code, body) = leader
        .admin_post(
            "/v1/migrations",
            serde_json::json!({ "to": "default", "overwrite": true }),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    leader.wait_paused("migrate.copying").await;
    let mut on_a = client(&a.endpoint).await;
    let tenant_keys_on_a = on_a
        .get(TENANT, Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .unwrap()
        .kvs()
        .iter()
        .filter(|kv| !kv.key().windows(9).any(|w| w == b"\0cutover/"))
        .count();
    assert_eq!(tenant_keys_on_a, 0, "Preparing cleared the tenant's old copy on A");

    // Those deletes must be held by the late replica, never forwarded.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = seen.lock().clone();
        if !got.is_empty() {
            panic!(
                "the late replica forwarded {} events a later migration wrote on the store the tenant left, \
                 the first: {:?}",
                got.len(),
                &got[..got.len().min(3)]
            );
        }
        if held_watch_responses(&late).await > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the late replica neither forwarded nor held A's events"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    late.release("follower.switch").await;
    eventually("the late replica switches to B", Duration::from_secs(20), || async {
        late.status().await["dataStore"] == "dedicated"
    })
    .await;

    // The tenant's own write on B arrives, and it is the only event.
    let key = format!("{TENANT}configmaps/ns/after");
    let put = c1.put(key.as_str(), "new", None).await.unwrap();
    let put_rev = put.header().unwrap().revision();
    eventually("the watcher sees the write on B", Duration::from_secs(20), || {
        let n = seen.lock().len();
        async move { n > 0 }
    })
    .await;
    let got = seen.lock().clone();
    assert_eq!(got, vec![(true, key, "new".to_string(), put_rev, None)]);
    assert_eq!(held_watch_responses(&late).await, 0);
    leader.release("migrate.copying").await;
    collect.abort();
}

/// A leader whose migration has committed and switched, but is still finishing (its
/// lease, the target's claim), must follow the next migration, led by another replica,
/// at once: that "moved" marker is not its own. Found by the soak (seed
/// 0xf0909eecd751d370): the former leader waited 30 s for a swap of its own, its watch
/// meanwhile held on the store the tenant had left, and a watch that missed four
/// migrations could only be canceled as compacted.
#[tokio::test]
async fn a_leader_still_finishing_follows_the_next_migration_at_once() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let config = two_stores(&a, &b, "");
    let first = Proxy::start(&config).await;
    let second = Proxy::start(&config).await;
    let mut c = client(&first.endpoint).await;
    seed_with_history(&mut c, 10).await;

    first.failpoint("migrate.switched", "return(pause)").await;
    let (code, body) = first
        .admin_post("/v1/migrations", serde_json::json!({ "to": "dedicated" }))
        .await;
    assert_eq!(code, 202, "{body}");
    first.wait_paused("migrate.switched").await;
    eventually("the other replica follows to B", Duration::from_secs(20), || async {
        second.status().await["dataStore"] == "dedicated"
    })
    .await;

    // Back to A, led by the other replica, while the first still finishes its own.
    let (code, body) = second
        .admin_post(
            "/v1/migrations",
            serde_json::json!({ "to": "default", "overwrite": true }),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    eventually("the migration back to A commits", Duration::from_secs(30), || async {
        second.status().await["dataStore"] == "default"
    })
    .await;
    let started = Instant::now();
    eventually(
        "the first replica follows back to A",
        Duration::from_secs(20),
        || async { first.status().await["dataStore"] == "default" },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the first replica took {:?} to follow a migration it did not lead",
        started.elapsed()
    );
    first.release("migrate.switched").await;
    let key = format!("{TENANT}configmaps/ns/after");
    let put = c.put(key.as_str(), "v", None).await.unwrap();
    assert!(put.header().unwrap().revision() > 2_000_000, "written in A's new era");
}

/// The commit Txn is applied but its answer comes later than `fenceTimeout`: the
/// migration must not be given up (the source already says "moved"), and no data may be
/// deleted from the target.
#[tokio::test]
async fn a_commit_answered_after_the_fence_timeout_is_not_undone() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let p = Proxy::start(&two_stores(&a, &b, "migration: {fenceTimeout: 1s}\n")).await;
    let mut c = client(&p.endpoint).await;
    seed_with_history(&mut c, 40).await;
    let before = tenant_state(&p.endpoint).await;

    // The commit Txn is applied; the migrator hears of it 3 s later.
    p.failpoint("migrate.commit.after_send", "1*return(sleep:3000)").await;
    let view = migrate(&p, "dedicated").await;
    let target_keys = client(&b.endpoint)
        .await
        .get(TENANT, Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .unwrap()
        .count();
    let marker = client(&a.endpoint)
        .await
        .get(format!("{TENANT}\0cutover/fence"), None)
        .await
        .unwrap();
    let marker = marker.kvs().first().map(|kv| kv.value_str().unwrap().to_string());
    assert_eq!(
        view["outcome"], "Succeeded",
        "{view}\nthe source's fence key: {marker:?}; keys on the target: {target_keys}"
    );
    assert_tenant_on_target(&p, &b, &before).await;
}

/// After a commit: the proxy serves from the target, the tenant is there whole (directly
/// on the target too), and the source holds the "moved" marker.
async fn assert_tenant_on_target(p: &Proxy, b: &Etcd, before: &crate::migrate::TenantState) {
    assert_eq!(p.status().await["dataStore"], "dedicated");
    let after = tenant_state(&p.endpoint).await;
    assert_eq!(&after, before, "I1/I3: the tenant as clients see it, after the commit");
    let direct = client(&b.endpoint)
        .await
        .get(TENANT, Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .unwrap();
    assert!(
        direct.count() as usize >= before.len(),
        "the target holds the tenant ({} keys, {} expected)",
        direct.count(),
        before.len()
    );
}

/// The leading replica dies while copying. Within the migration lease's TTL + 2 s every
/// other replica shows that migration as failed ("leader lost") and is Ready; a retry
/// through another replica clears the dead migration's partial copy by itself (no
/// --overwrite) and succeeds.
#[tokio::test]
async fn a_dead_leader_ends_as_failed_everywhere_and_a_retry_needs_no_overwrite() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let config = two_stores(&a, &b, "migration: {leaseTTL: 2s, pageSize: 10}\n");
    let mut leader = Proxy::start(&config).await;
    let other = Proxy::start(&config).await;
    let mut c = client(&other.endpoint).await;
    seed_with_history(&mut c, 60).await;
    let before = tenant_state(&other.endpoint).await;

    // Three pages are copied, then the leader stops in the fourth and is killed there.
    leader.failpoint("migrate.copy.page", "3*off->return(pause)").await;
    let (code, body) = leader
        .admin_post("/v1/migrations", serde_json::json!({ "to": "dedicated" }))
        .await;
    assert_eq!(code, 202, "{body}");
    leader.wait_paused("migrate.copy.page").await;
    eventually(
        "the other replica shows the migration",
        Duration::from_secs(10),
        || async { other.status().await["migration"]["outcome"] == "Running" },
    )
    .await;
    let partial = client(&b.endpoint)
        .await
        .get(TENANT, Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .unwrap()
        .count();
    assert!(partial > 0, "the dead migration left a partial copy");
    leader.kill();
    let killed = Instant::now();

    eventually(
        "the other replica shows the dead leader's migration as failed",
        Duration::from_secs(4),
        || async {
            let st = other.status().await;
            st["phase"] == "Ready" && st["migration"]["outcome"] == "Failed"
        },
    )
    .await;
    let st = other.status().await;
    eprintln!("failed after {:?}: {}", killed.elapsed(), st["migration"]);
    assert!(
        st["migration"]["error"].as_str().unwrap_or("").contains("leader lost"),
        "{st}"
    );

    // A retry (no overwrite) clears the partial copy and succeeds.
    eventually("a retry starts", Duration::from_secs(30), || async {
        let (code, body) = other
            .admin_post("/v1/migrations", serde_json::json!({ "to": "dedicated" }))
            .await;
        assert!(code == 202 || code == 409, "{code} {body}");
        code == 202
    })
    .await;
    let view = crate::migrate::wait_end(&other).await;
    assert_eq!(view["outcome"], "Succeeded", "{view}");
    assert_tenant_on_target(&other, &b, &before).await;
}

/// How a scenario of the matrix disturbs the migration.
#[derive(Clone, Copy)]
enum Disturb {
    /// Only the failpoints.
    Nothing,
    /// Abort through the admin API once the leader is paused at the point.
    Abort(&'static str),
    /// Revoke the migration's lease on the source (the fence and lock go with it) while
    /// the leader is paused at the point.
    RevokeLease(&'static str),
}

/// One fault at one step: failpoints on the leading replica, and what must come of it.
struct Scenario {
    name: &'static str,
    config: &'static str,
    points: &'static [(&'static str, &'static str)],
    disturb: Disturb,
    /// "Succeeded", "Failed" or "Aborted".
    outcome: &'static str,
    /// Words the migration's error must contain.
    error: &'static str,
    /// Whether the failed migration's copy stays on the target (claimed) after it.
    copy_stays: bool,
    /// Whether the leader crashes (a `return(crash)` point): the follower reports.
    crashes: bool,
}

/// Runs a scenario with two replicas (the leader and a follower), each with a load, and
/// checks I6 on both: every replica on the source with writes flowing after a failure,
/// every replica on the target after a commit, nothing acknowledged lost (I1), no
/// revision backwards (I2), every watch event once in order (I4), leases kept (I5).
async fn run_scenario(s: &Scenario) {
    eprintln!("--- scenario: {}", s.name);
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let config = two_stores(&a, &b, s.config);
    let mut leader = Proxy::start(&config).await;
    let follower = Proxy::start(&config).await;
    let mut c = client(&leader.endpoint).await;
    seed_with_history(&mut c, 40).await;
    let seeded = tenant_state(&leader.endpoint).await;
    let loads = [
        Load::start_in(&leader.endpoint, "l/").await,
        Load::start_in(&follower.endpoint, "f/").await,
    ];
    for l in &loads {
        l.progress(10).await;
    }
    for (point, actions) in s.points {
        leader.failpoint(point, actions).await;
    }
    let (code, body) = leader
        .admin_post("/v1/migrations", serde_json::json!({ "to": "dedicated" }))
        .await;
    assert_eq!(code, 202, "{}: {body}", s.name);
    match s.disturb {
        Disturb::Nothing => {}
        Disturb::Abort(point) => {
            leader.wait_paused(point).await;
            let (code, body) = leader.admin_post("/v1/migrations/abort", serde_json::json!({})).await;
            assert_eq!(code, 200, "{}: {body}", s.name);
            leader.release(point).await;
        }
        Disturb::RevokeLease(point) => {
            leader.wait_paused(point).await;
            let mut direct = client(&a.endpoint).await;
            let lock = direct.get(format!("{TENANT}\0cutover/lock"), None).await.unwrap();
            let lease = lock.kvs().first().expect("the migration's lock").lease();
            direct.lease_revoke(lease).await.unwrap();
            leader.release(point).await;
        }
    }
    if s.crashes {
        // Its clients' errors from here on are its death.
        loads[0].abandon();
        eventually(
            &format!("{}: the leader crashed", s.name),
            Duration::from_secs(30),
            || {
                let exited = leader.try_exit().is_some();
                async move { exited }
            },
        )
        .await;
    }
    let reporter = if s.crashes { &follower } else { &leader };
    // A replica that did not lead shows the migration once it has read its view.
    eventually(
        &format!("{}: the migration ends", s.name),
        Duration::from_secs(60),
        || async {
            let st = reporter.status().await;
            !st["migration"].is_null() && st["migration"]["outcome"] != "Running" && st["phase"] == "Ready"
        },
    )
    .await;
    let view = reporter.status().await["migration"].clone();
    assert_eq!(view["outcome"], s.outcome, "{}: {view}", s.name);
    let error = view["error"].as_str().unwrap_or("");
    assert!(
        error.contains(s.error),
        "{}: the error {error:?} names {:?}",
        s.name,
        s.error
    );
    if !s.crashes {
        for (point, _) in s.points {
            leader.release(point).await;
        }
    }
    let home = if s.outcome == "Succeeded" {
        "dedicated"
    } else {
        "default"
    };
    let replicas: Vec<&Proxy> = if s.crashes {
        vec![&follower]
    } else {
        vec![&leader, &follower]
    };
    for p in replicas {
        eventually(
            &format!("{}: every replica serves from {home}", s.name),
            Duration::from_secs(20),
            || async { p.status().await["dataStore"] == home && p.status().await["phase"] == "Ready" },
        )
        .await;
    }
    // Writes flow on the replicas after the end.
    for l in &loads[usize::from(s.crashes)..] {
        l.progress(10).await;
    }
    let mut seen = Vec::new();
    for l in loads {
        seen.push(l.finish().await);
    }
    let after = tenant_state(&follower.endpoint).await;
    for (i, seen) in seen.into_iter().enumerate() {
        let check = std::panic::AssertUnwindSafe(|| crate::migrate::check_load(&seen, &after));
        if let Err(e) = std::panic::catch_unwind(check) {
            panic!(
                "{}: the load of replica {i}: {}",
                s.name,
                e.downcast_ref::<String>().cloned().unwrap_or_default()
            );
        }
    }
    let after = tenant_state(&follower.endpoint).await;
    for (k, v) in &seeded {
        if !k.contains("/l/") && !k.contains("/f/") {
            assert_eq!(after.get(k), Some(v), "{}: I3 {k}", s.name);
        }
    }
    let mut direct_a = client(&a.endpoint).await;
    let fence = direct_a.get(format!("{TENANT}\0cutover/fence"), None).await.unwrap();
    let lock = direct_a.get(format!("{TENANT}\0cutover/lock"), None).await.unwrap();
    assert_eq!(lock.count(), 0, "{}: the lock is gone", s.name);
    let on_target = client(&b.endpoint)
        .await
        .get(TENANT, Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .unwrap();
    let tenant_keys_on_target = on_target
        .kvs()
        .iter()
        .filter(|kv| !kv.key_str().unwrap_or("").contains('\0'))
        .count();
    if s.outcome == "Succeeded" {
        let marker = fence.kvs().first().map(|kv| kv.value_str().unwrap().to_string());
        assert!(
            marker.as_deref().unwrap_or("").contains("moved"),
            "{}: {marker:?}",
            s.name
        );
    } else {
        assert_eq!(fence.count(), 0, "{}: the fence lifted", s.name);
        if s.copy_stays {
            assert!(tenant_keys_on_target > 0, "{}: the claimed copy stays", s.name);
            // A retry clears it without --overwrite.
            let (code, body) = follower
                .admin_post("/v1/migrations", serde_json::json!({ "to": "dedicated" }))
                .await;
            assert_eq!(code, 202, "{}: {body}", s.name);
            let view = crate::migrate::wait_end(&follower).await;
            assert_eq!(view["outcome"], "Succeeded", "{}: the retry: {view}", s.name);
        } else {
            assert_eq!(tenant_keys_on_target, 0, "{}: the partial copy is cleared", s.name);
        }
    }
}

const ABORTS: &[Scenario] = &[
    Scenario {
        name: "abort while preparing",
        config: "",
        points: &[("migrate.preparing", "return(pause)")],
        disturb: Disturb::Abort("migrate.preparing"),
        outcome: "Aborted",
        error: "aborted",
        copy_stays: false,
        crashes: false,
    },
    Scenario {
        name: "abort while copying",
        config: "",
        points: &[("migrate.copy.page", "return(pause)")],
        disturb: Disturb::Abort("migrate.copy.page"),
        outcome: "Aborted",
        error: "aborted",
        copy_stays: false,
        crashes: false,
    },
    Scenario {
        name: "abort while catching up",
        config: "",
        points: &[("migrate.verify.full", "return(pause)")],
        disturb: Disturb::Abort("migrate.verify.full"),
        outcome: "Aborted",
        error: "aborted",
        copy_stays: false,
        crashes: false,
    },
    Scenario {
        name: "abort while fenced",
        config: "",
        points: &[("migrate.drain", "return(pause)")],
        disturb: Disturb::Abort("migrate.drain"),
        outcome: "Aborted",
        error: "aborted",
        copy_stays: false,
        crashes: false,
    },
];

const ERRORS: &[Scenario] = &[
    Scenario {
        name: "error after the lock",
        config: "",
        points: &[("migrate.prepare.after_lock", "1*return")],
        disturb: Disturb::Nothing,
        outcome: "Failed",
        error: "failpoint migrate.prepare.after_lock",
        copy_stays: false,
        crashes: false,
    },
    Scenario {
        name: "error in the catch-up's apply",
        config: "",
        points: &[("migrate.catchup.apply", "1*return")],
        disturb: Disturb::Nothing,
        outcome: "Failed",
        error: "failpoint migrate.catchup.apply",
        copy_stays: false,
        crashes: false,
    },
    Scenario {
        name: "error before the fence write",
        config: "",
        points: &[("migrate.fence.before_write", "1*return")],
        disturb: Disturb::Nothing,
        outcome: "Failed",
        error: "failpoint migrate.fence.before_write",
        copy_stays: false,
        crashes: false,
    },
    Scenario {
        name: "error after the fence write",
        config: "",
        points: &[("migrate.fence.after_write", "1*return")],
        disturb: Disturb::Nothing,
        outcome: "Failed",
        error: "failpoint migrate.fence.after_write",
        copy_stays: false,
        crashes: false,
    },
    Scenario {
        name: "error in a verification round",
        config: "",
        points: &[("migrate.verify.round", "1*return")],
        disturb: Disturb::Nothing,
        outcome: "Failed",
        error: "failpoint migrate.verify.round",
        copy_stays: false,
        crashes: false,
    },
    Scenario {
        name: "verification mismatch",
        config: "",
        points: &[("migrate.verify.mismatch", "1*return")],
        disturb: Disturb::Nothing,
        outcome: "Failed",
        error: "verification",
        copy_stays: false,
        crashes: false,
    },
    Scenario {
        name: "error persisting the translation",
        config: "",
        points: &[("migrate.record.persist", "1*return")],
        disturb: Disturb::Nothing,
        outcome: "Failed",
        error: "failpoint migrate.record.persist",
        copy_stays: false,
        crashes: false,
    },
    Scenario {
        name: "error before the commit is sent",
        config: "",
        points: &[("migrate.commit.before_send", "1*return")],
        disturb: Disturb::Nothing,
        outcome: "Failed",
        error: "failpoint migrate.commit.before_send",
        copy_stays: false,
        crashes: false,
    },
];

const FENCE: &[Scenario] = &[
    Scenario {
        name: "the migration's lease revoked while fenced",
        config: "",
        points: &[("migrate.drain", "1*return(pause)")],
        disturb: Disturb::RevokeLease("migrate.drain"),
        outcome: "Failed",
        error: "fence was lost",
        copy_stays: false,
        crashes: false,
    },
    Scenario {
        name: "fenceTimeout while fenced",
        config: "migration: {fenceTimeout: 1s}\n",
        points: &[("migrate.drain", "1*return(pause)")],
        disturb: Disturb::Nothing,
        outcome: "Failed",
        error: "fence was held longer than 1s",
        copy_stays: false,
        crashes: false,
    },
    Scenario {
        name: "the leader crashes in the release, before clearing its copy",
        config: "migration: {leaseTTL: 2s}\n",
        points: &[
            ("migrate.verify.mismatch", "1*return"),
            ("migrate.release.before_delete", "return(crash)"),
        ],
        disturb: Disturb::Nothing,
        outcome: "Failed",
        error: "verification",
        copy_stays: true,
        crashes: true,
    },
];

const AFTER_COMMIT: &[Scenario] = &[
    Scenario {
        name: "the commit's answer lost, read back after failures",
        config: "",
        points: &[
            ("migrate.commit.answer", "1*return(lost)"),
            ("migrate.commit.read_back", "2*return"),
        ],
        disturb: Disturb::Nothing,
        outcome: "Succeeded",
        error: "",
        copy_stays: false,
        crashes: false,
    },
    Scenario {
        name: "fenceTimeout while the commit is in flight",
        config: "migration: {fenceTimeout: 1s}\n",
        points: &[("migrate.commit.after_send", "1*return(sleep:2000)")],
        disturb: Disturb::Nothing,
        outcome: "Succeeded",
        error: "",
        copy_stays: false,
        crashes: false,
    },
    Scenario {
        name: "slow re-attach of the watches",
        config: "",
        points: &[("server.watch.reattach", "return(sleep:300)")],
        disturb: Disturb::Nothing,
        outcome: "Succeeded",
        error: "",
        copy_stays: false,
        crashes: false,
    },
];

#[tokio::test]
async fn an_abort_in_any_phase_before_the_commit_leaves_everyone_on_the_source() {
    for s in ABORTS {
        run_scenario(s).await;
    }
}

#[tokio::test]
async fn an_error_at_any_step_before_the_commit_leaves_everyone_on_the_source() {
    for s in ERRORS {
        run_scenario(s).await;
    }
}

#[tokio::test]
async fn a_lost_fence_a_fence_timeout_or_a_crash_in_the_release_leave_everyone_on_the_source() {
    for s in FENCE {
        run_scenario(s).await;
    }
}

#[tokio::test]
async fn faults_after_the_commit_is_sent_end_with_everyone_on_the_target() {
    for s in AFTER_COMMIT {
        run_scenario(s).await;
    }
}

/// The tenant goes A -> B, then back B -> A. While the way back runs (A is its target), a
/// proxy that starts with the old configuration (`dataStore: default`, which is A) must
/// still be sent on to B by A's "moved" marker, and write there; and if the leader dies
/// right after the commit, before it removed A's old marker, a proxy that starts then
/// must find A authoritative (A's marker is older than B's) and clear the old marker.
/// Found by the soak: Preparing used to delete the target's marker at once.
#[tokio::test]
async fn a_proxy_starting_while_the_tenant_moves_back_finds_its_home() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let config = two_stores(&a, &b, "migration: {leaseTTL: 2s}\n");
    let mut leader = Proxy::start(&config).await;
    let mut c = client(&leader.endpoint).await;
    seed_with_history(&mut c, 20).await;
    let view = migrate(&leader, "dedicated").await;
    assert_eq!(view["outcome"], "Succeeded", "{view}");

    // Back to A, stopped while catching up: A's marker must still send proxies to B.
    leader.failpoint("migrate.catching_up", "return(pause)").await;
    let (code, body) = leader
        .admin_post(
            "/v1/migrations",
            serde_json::json!({ "to": "default", "overwrite": true }),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    leader.wait_paused("migrate.catching_up").await;
    let late = Proxy::start(&config).await;
    assert_eq!(
        late.status().await["dataStore"],
        "dedicated",
        "a proxy starting now serves from B"
    );
    let key = format!("{TENANT}configmaps/ns/late");
    let put = client(&late.endpoint).await.put(key.as_str(), "v", None).await.unwrap();
    assert!(
        put.header().unwrap().revision() > 1_000_000,
        "in B's (translated) revisions"
    );
    assert_eq!(
        client(&b.endpoint).await.get(key.as_str(), None).await.unwrap().count(),
        1
    );
    assert_eq!(
        client(&a.endpoint).await.get(key.as_str(), None).await.unwrap().count(),
        0
    );
    drop(late);

    // The leader dies right after the commit, before it cleared A's old marker.
    leader.failpoint("migrate.committed", "return(crash)").await;
    leader.release("migrate.catching_up").await;
    eventually("the leader crashed after the commit", Duration::from_secs(30), || {
        let exited = leader.try_exit().is_some();
        async move { exited }
    })
    .await;
    let b_marker = client(&b.endpoint)
        .await
        .get(format!("{TENANT}\0cutover/fence"), None)
        .await
        .unwrap();
    assert!(
        b_marker.kvs()[0].value_str().unwrap().contains("moved"),
        "B says the tenant moved back"
    );
    let restarted = Proxy::start(&config).await;
    assert_eq!(
        restarted.status().await["dataStore"],
        "default",
        "A is the tenant's home again"
    );
    let mut c = client(&restarted.endpoint).await;
    let put = tokio::time::timeout(Duration::from_secs(10), c.put(key.as_str(), "w", None))
        .await
        .expect("a write on A is not held by its stale marker")
        .unwrap();
    assert!(put.header().unwrap().revision() > 2_000_000);
    let got = c.get(key.as_str(), None).await.unwrap();
    assert_eq!(got.kvs()[0].value_str().unwrap(), "w");
    let a_marker = client(&a.endpoint)
        .await
        .get(format!("{TENANT}\0cutover/fence"), None)
        .await
        .unwrap();
    assert_eq!(a_marker.count(), 0, "A's stale marker was removed");
}

/// Two datastores, a proxy with a 2 s migration lease and ten seeded keys, and a
/// migration to the second datastore held at the start of its catch-up (the copy done,
/// the lock and the claim written).
async fn paused_at_the_catch_up() -> (Etcd, Etcd, Proxy, etcd_client::Client) {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let config = two_stores(&a, &b, "migration: {leaseTTL: 2s}\n");
    let proxy = Proxy::start(&config).await;
    let mut c = client(&proxy.endpoint).await;
    seed_with_history(&mut c, 10).await;
    proxy.failpoint("migrate.catching_up", "return(pause)").await;
    let (code, body) = proxy
        .admin_post("/v1/migrations", serde_json::json!({ "to": "dedicated" }))
        .await;
    assert_eq!(code, 202, "{body}");
    proxy.wait_paused("migrate.catching_up").await;
    (a, b, proxy, c)
}

/// The migration's lease dropped by the source while the migration runs (its refreshes
/// lost, or revoked by an operator): the lock and any fence are gone, so another replica
/// may start a migration. The migration must fail then, with that reason, and not carry
/// on (paused here at the start of its catch-up, it would wait for ever) until a write
/// bound to the dead lease is refused.
#[tokio::test]
async fn a_migration_whose_lease_is_gone_fails_at_once_and_says_why() {
    let (a, b, proxy, mut c) = paused_at_the_catch_up().await;

    let mut direct = client(&a.endpoint).await;
    let lock = direct.get(format!("{TENANT}\0cutover/lock"), None).await.unwrap();
    let lease = lock.kvs().first().map(|kv| kv.lease()).expect("the migration's lock");
    assert_ne!(lease, 0, "the lock is bound to the migration's lease");
    direct.lease_revoke(lease).await.unwrap();

    // Still paused at the failpoint: only the lease's loss can end it.
    let view = crate::migrate::wait_end(&proxy).await;
    assert_eq!(view["outcome"], "Failed", "{view}");
    let error = view["error"].as_str().unwrap_or_default();
    assert!(error.contains("lease is gone"), "{view}");
    // The partial copy was cleared from the target, and the source serves on.
    let left = client(&b.endpoint)
        .await
        .get(TENANT, Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .unwrap();
    assert_eq!(left.count(), 0, "the target keeps nothing of the failed copy");
    let put = c.put(format!("{TENANT}configmaps/ns/after"), "v", None).await;
    assert!(put.is_ok(), "{put:?}");
    assert_eq!(proxy.status().await["dataStore"], "default");
}

/// The migration's lease refreshes all failing (the source unreachable for the leader
/// alone, say): after a whole TTL without an answered refresh the lease is taken as lost,
/// as the source has dropped it or is about to, and the migration fails with that reason.
#[tokio::test]
async fn a_migration_that_cannot_refresh_its_lease_for_a_ttl_fails() {
    let (_a, _b, proxy, mut c) = paused_at_the_catch_up().await;
    proxy.failpoint("migrate.lease.refresh", "return").await;
    let view = crate::migrate::wait_end(&proxy).await;
    assert_eq!(view["outcome"], "Failed", "{view}");
    assert!(view["error"].as_str().unwrap_or_default().contains("lease"), "{view}");
    let put = c.put(format!("{TENANT}configmaps/ns/after"), "v", None).await;
    assert!(put.is_ok(), "{put:?}");
    assert_eq!(proxy.status().await["dataStore"], "default");
}

/// A migration whose claim on the target was taken by another (a migration that lost its
/// lease may not know yet while a new one clears and claims the target) writes nothing
/// more there: its catch-up's writes are conditional on the claim, and it fails saying so.
/// Held at `migrate.catchup.apply` with a change to apply, the target's claim is
/// overwritten, then the catch-up goes on.
#[tokio::test]
async fn a_catch_up_writes_nothing_once_the_targets_claim_is_another_migrations() {
    let (_a, b, proxy, mut c) = paused_at_the_catch_up().await;
    // A change after the copy, for the catch-up to apply; it stops before applying it.
    let late = format!("{TENANT}configmaps/ns/late");
    c.put(late.as_str(), "v", None).await.unwrap();
    proxy.failpoint("migrate.catchup.apply", "return(pause)").await;
    proxy.release("migrate.catching_up").await;
    proxy.wait_paused("migrate.catchup.apply").await;

    let mut target = client(&b.endpoint).await;
    let claim = format!("{TENANT}\0cutover/claim");
    let ours = target.get(claim.as_str(), None).await.unwrap();
    assert_eq!(ours.count(), 1, "the migration claimed the target");
    let other = r#"{"state":"copying","migration":"m-other","from":"default","leader":"elsewhere/1"}"#;
    target.put(claim.as_str(), other, None).await.unwrap();
    proxy.release("migrate.catchup.apply").await;

    let view = crate::migrate::wait_end(&proxy).await;
    assert_eq!(view["outcome"], "Failed", "{view}");
    assert!(view["error"].as_str().unwrap_or_default().contains("claim"), "{view}");
    assert_eq!(
        target.get(late.as_str(), None).await.unwrap().count(),
        0,
        "nothing was applied to the target once its claim was another's"
    );
    let now = target.get(claim.as_str(), None).await.unwrap();
    assert_eq!(now.kvs()[0].value_str().unwrap(), other, "the other claim stays");
    assert_eq!(proxy.status().await["dataStore"], "default");
}
