//! Faults injected at named points (src/failpoint.rs) of the migration and the data path,
//! each with the outcome it must have (I6: every replica on the source with writes
//! flowing, or every replica on the target; nothing acknowledged lost). These tests need
//! a build with the `failpoints` feature (`make it` has it).

use std::time::{Duration, Instant};

use etcd_client::GetOptions;

use crate::migrate::{migrate, seed_with_history, tenant_state, two_stores, TENANT};
use crate::support::{client, eventually, Etcd, Proxy};

/// The gauge a proxy exports for requests waiting on a store the tenant left.
async fn held_reads(p: &Proxy) -> i64 {
    let text = p.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix("cutover_held_reads "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
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

/// The commit Txn is applied but its answer is lost, and reading the fence key back fails
/// a few times: the outcome is read until it is known, and the migration rolls forward.
#[tokio::test]
async fn a_commit_whose_answer_is_lost_is_read_back_until_known() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let p = Proxy::start(&two_stores(&a, &b, "")).await;
    let mut c = client(&p.endpoint).await;
    seed_with_history(&mut c, 40).await;
    let before = tenant_state(&p.endpoint).await;

    p.failpoint("migrate.commit.answer", "1*return(lost)").await;
    p.failpoint("migrate.commit.read_back", "3*return").await;
    let view = migrate(&p, "dedicated").await;
    assert_eq!(view["outcome"], "Succeeded", "{view}");
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
