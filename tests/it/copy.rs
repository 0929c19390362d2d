//! The Copying phase of a migration, between two real etcd servers: pinned revision,
//! pages, batched Txns, leases first, the key map K, and what it refuses.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use cutover::config::DataStore as DataStoreConfig;
use cutover::keys::KeyRange;
use cutover::metrics::Metrics;
use cutover::migrate::copy::{copy_range, CopyError, CopyOptions};
use cutover::upstream::Datastore;
use etcd_client::{GetOptions, LeaseGrantOptions, PutOptions};

use crate::support::{client, Etcd};

fn datastore(name: &str, etcd: &Etcd) -> Arc<Datastore> {
    let cfg = DataStoreConfig {
        name: name.into(),
        endpoints: vec![format!("http://{}", etcd.endpoint)],
        tls: None,
        basic_auth: None,
    };
    Datastore::new(&cfg, Arc::new(Metrics::new())).expect("datastore")
}

#[tokio::test]
async fn copies_the_tenant_range_at_one_revision_with_leases_and_source_revisions() {
    let source = Etcd::start().await;
    let target = Etcd::start().await;
    let mut s = client(&source.endpoint).await;
    let mut t = client(&target.endpoint).await;
    // Leases on both sides, so the source's lease ID is taken on the target (a shared target).
    s.lease_grant(120, Some(LeaseGrantOptions::new().with_id(0x77)))
        .await
        .unwrap();
    s.lease_grant(90, Some(LeaseGrantOptions::new().with_id(0x88)))
        .await
        .unwrap();
    t.lease_grant(30, Some(LeaseGrantOptions::new().with_id(0x88)))
        .await
        .unwrap();
    for i in 0..500 {
        let key = format!("/t/registry/obj-{i:04}");
        let lease = match i % 50 {
            0 => Some(PutOptions::new().with_lease(0x77)),
            1 => Some(PutOptions::new().with_lease(0x88)),
            _ => None,
        };
        s.put(key.clone(), format!("v{i}"), lease).await.unwrap();
        if i % 7 == 0 {
            s.put(key, format!("v{i}-updated"), None).await.unwrap();
        }
    }
    s.put("/other/x", "not the tenant's", None).await.unwrap();
    s.put(b"/t/\x00cutover/fence".to_vec(), "reserved", None).await.unwrap();
    let before = s.get("/t/", Some(GetOptions::new().with_prefix())).await.unwrap();

    let opts = CopyOptions {
        page_size: 37,
        batch_ops: 16,
        concurrency: 3,
        exclude: Some(Bytes::from_static(b"/t/\x00cutover/")),
        ..Default::default()
    };
    let src = datastore("source", &source);
    let dst = datastore("target", &target);
    let progress = std::sync::Mutex::new(Vec::new());
    let out = copy_range(&src, &dst, &KeyRange::prefix(b"/t/"), &opts, |st| {
        progress.lock().unwrap().push(st.keys)
    })
    .await
    .expect("copy succeeds");

    assert_eq!(
        out.stats.revision,
        before.header().unwrap().revision(),
        "pinned at the revision of the first page"
    );
    assert_eq!(out.stats.keys, 500);
    assert_eq!(out.stats.leases, 2);
    assert_eq!(out.lease_ids[&0x77], 0x77, "the source's ID where it is free");
    let new_88 = out.lease_ids[&0x88];
    assert_ne!(new_88, 0x88, "0x88 was taken on the target and got a new ID");
    let steps = progress.lock().unwrap().clone();
    assert!(
        steps.windows(2).all(|w| w[0] < w[1]) && steps.last() == Some(&500),
        "{steps:?}"
    );

    let copied = t.get("/t/", Some(GetOptions::new().with_prefix())).await.unwrap();
    let src_kvs: BTreeMap<Vec<u8>, _> = before
        .kvs()
        .iter()
        .filter(|kv| !kv.key().starts_with(b"/t/\x00"))
        .map(|kv| (kv.key().to_vec(), kv))
        .collect();
    assert_eq!(copied.kvs().len(), src_kvs.len(), "the reserved key stays behind");
    for kv in copied.kvs() {
        let orig = src_kvs[kv.key()];
        assert_eq!(kv.value(), orig.value());
        let expected_lease = if orig.lease() == 0x88 { new_88 } else { orig.lease() };
        assert_eq!(kv.lease(), expected_lease, "{:?}", kv.key_str());
        // K records the source revisions for the revision translation.
        let k = out.keys[kv.key()];
        assert_eq!(
            (k.source_create, k.source_mod, k.source_version),
            (orig.create_revision(), orig.mod_revision(), orig.version())
        );
        assert_eq!(
            (k.target_create, k.target_mod, k.target_version),
            (kv.create_revision(), kv.mod_revision(), kv.version())
        );
    }
    assert_eq!(t.get("/other/x", None).await.unwrap().count(), 0);
    let ttl = t.lease_time_to_live(0x77, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 120, "same ID, same granted TTL");

    // A second copy into the now non-empty target is refused, unless asked to overwrite.
    match copy_range(&src, &dst, &KeyRange::prefix(b"/t/"), &opts, |_| {}).await {
        Err(CopyError::TargetNotEmpty { count }) => assert_eq!(count, 500),
        other => panic!("expected TargetNotEmpty, got {other:?}"),
    }
    let again = copy_range(
        &src,
        &dst,
        &KeyRange::prefix(b"/t/"),
        &CopyOptions {
            overwrite: true,
            ..opts
        },
        |_| {},
    )
    .await
    .expect("overwrite");
    assert_eq!(again.stats.keys, 500);
}

#[tokio::test]
async fn an_unreachable_target_is_a_clear_error() {
    let source = Etcd::start().await;
    let mut target = Etcd::start().await;
    let dst = datastore("target", &target);
    target.kill();
    let src = datastore("source", &source);
    let err = copy_range(&src, &dst, &KeyRange::prefix(b"/t/"), &CopyOptions::default(), |_| {})
        .await
        .expect_err("no target");
    assert!(
        err.to_string()
            .starts_with("target: datastore \"target\": no endpoint reachable"),
        "{err}"
    );
}

#[tokio::test]
async fn catch_up_applies_every_later_change_and_keeps_k_current() {
    use cutover::migrate::catchup::{follow, Follow, Position};
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};

    let source = Etcd::start().await;
    let target = Etcd::start().await;
    let mut s = client(&source.endpoint).await;
    let mut t = client(&target.endpoint).await;
    s.lease_grant(120, Some(LeaseGrantOptions::new().with_id(0x77)))
        .await
        .unwrap();
    for i in 0..100 {
        let lease = (i % 10 == 0).then(|| PutOptions::new().with_lease(0x77));
        s.put(format!("/t/k{i:03}"), format!("v{i}"), lease).await.unwrap();
    }
    let src = datastore("source", &source);
    let dst = datastore("target", &target);
    let range = KeyRange::prefix(b"/t/");
    let mut copied = copy_range(&src, &dst, &range, &CopyOptions::default(), |_| {})
        .await
        .unwrap();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(None);
    let (pos_tx, mut pos_rx) = tokio::sync::watch::channel(Position::default());
    let follower = {
        let (src, dst, range) = (src.clone(), dst.clone(), range.clone());
        tokio::spawn(async move {
            let spec = Follow {
                source: &src,
                target: &dst,
                range: &range,
                exclude: None,
                from: copied.stats.revision + 1,
                view: None,
                // The stop revision is the last change's own: wait for its event (a
                // progress answer of etcd 3.4 can overtake pending events).
                strict: true,
                link: None,
                claim: None,
            };
            let r = follow(spec, &mut copied, stop_rx, &pos_tx).await;
            (r, copied.keys, copied.lease_ids)
        })
    };

    // Changes after the copy: updates, new keys, deletes, an atomic multi-key Txn, a new
    // lease with a key on it, a revoked lease (its keys go), and noise outside the range.
    for i in 0..30 {
        s.put(format!("/t/k{i:03}"), format!("v{i}-2"), None).await.unwrap();
    }
    for i in 100..120 {
        s.put(format!("/t/k{i:03}"), format!("new{i}"), None).await.unwrap();
    }
    s.delete("/t/k050", None).await.unwrap();
    s.txn(
        Txn::new()
            .when([Compare::version("/t/k051", CompareOp::Greater, 0)])
            .and_then([
                TxnOp::put("/t/k051", "txn-a", None),
                TxnOp::put("/t/k052", "txn-b", None),
                TxnOp::delete("/t/k053", None),
            ]),
    )
    .await
    .unwrap();
    let l = s.lease_grant(300, None).await.unwrap().id();
    s.put("/t/leased", "x", Some(PutOptions::new().with_lease(l)))
        .await
        .unwrap();
    s.lease_revoke(0x77).await.unwrap();
    s.put("/elsewhere", "noise", None).await.unwrap();
    // Deleted and created again: a new incarnation on both sides.
    s.delete("/t/k060", None).await.unwrap();
    s.put("/t/k060", "again", None).await.unwrap();

    let last = s
        .get("/t/", Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    // The lag is visible while following.
    let _ = pos_rx.changed().await;
    stop_tx.send(Some(last)).unwrap();
    let (result, keys, leases) = tokio::time::timeout(std::time::Duration::from_secs(20), follower)
        .await
        .expect("catch-up stops")
        .unwrap();
    let pos = result.expect("catch-up succeeds");
    assert!(pos.applied >= last, "{pos:?} vs {last}");

    let src_now = s.get("/t/", Some(GetOptions::new().with_prefix())).await.unwrap();
    let dst_now = t.get("/t/", Some(GetOptions::new().with_prefix())).await.unwrap();
    let view = |r: &etcd_client::GetResponse| -> Vec<(Vec<u8>, Vec<u8>, i64)> {
        r.kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.value().to_vec(), kv.lease()))
            .collect()
    };
    let mapped: Vec<(Vec<u8>, Vec<u8>, i64)> = view(&src_now)
        .into_iter()
        .map(|(k, v, lease)| (k, v, if lease == 0 { 0 } else { leases[&lease] }))
        .collect();
    assert_eq!(
        mapped,
        view(&dst_now),
        "the target holds exactly the source's tenant range"
    );
    // 100 + 20 new - k050 - k053 + /t/leased - 6 still on 0x77 when it was revoked
    // (k030..k090 but k050) + k060 created again.
    assert_eq!(src_now.kvs().len(), 114);
    assert_eq!(keys.len(), dst_now.kvs().len(), "K has an entry per key on the target");
    for (s_kv, t_kv) in src_now.kvs().iter().zip(dst_now.kvs()) {
        let k = keys[s_kv.key()];
        assert_eq!(
            (k.source_create, k.source_mod, k.source_version),
            (s_kv.create_revision(), s_kv.mod_revision(), s_kv.version()),
            "{:?}",
            s_kv.key_str()
        );
        assert_eq!(
            (k.target_create, k.target_mod, k.target_version),
            (t_kv.create_revision(), t_kv.mod_revision(), t_kv.version()),
            "{:?}",
            t_kv.key_str()
        );
    }
    // The multi-key Txn landed as one target revision.
    let a = t.get("/t/k051", None).await.unwrap();
    let b = t.get("/t/k052", None).await.unwrap();
    assert_eq!(a.kvs()[0].mod_revision(), b.kvs()[0].mod_revision());
    assert_eq!(t.get("/elsewhere", None).await.unwrap().count(), 0);
}

#[tokio::test]
async fn the_translation_is_persisted_in_the_target_and_reproduces_source_revisions() {
    use cutover::migrate::record::{load, persist};
    use cutover::route::revision::Revisions;

    let source = Etcd::start().await;
    let target = Etcd::start().await;
    let mut s = client(&source.endpoint).await;
    let mut t = client(&target.endpoint).await;
    for i in 0..200 {
        s.put(format!("/t/k{i:03}"), "v", None).await.unwrap();
        if i % 3 == 0 {
            s.put(format!("/t/k{i:03}"), "v2", None).await.unwrap();
        }
    }
    // The target is shared and busy with another tenant.
    for i in 0..50 {
        t.put(format!("/other/{i}"), "x", None).await.unwrap();
    }
    let src = datastore("source", &source);
    let dst = datastore("target", &target);
    assert!(
        load(&dst, b"/t/").await.unwrap().is_none(),
        "no record before a migration"
    );
    let copied = copy_range(&src, &dst, &KeyRange::prefix(b"/t/"), &CopyOptions::default(), |_| {})
        .await
        .unwrap();
    let l = copied.stats.revision;
    let s_rev = l + 1_000_000;
    let t_rev = persist(&dst, b"/t/", s_rev, l, &copied.keys, &copied.lease_ids)
        .await
        .unwrap();

    let tr = load(&dst, b"/t/").await.unwrap().expect("a record");
    assert_eq!((tr.s, tr.t, tr.l), (s_rev, t_rev, l));
    let mut loaded = std::collections::HashMap::new();
    tr.keys.for_each(|k, v| {
        loaded.insert(bytes::Bytes::copy_from_slice(k), v);
    });
    assert_eq!(loaded, copied.keys);
    assert!(
        loaded.values().all(|k| k.target_mod < tr.t),
        "T is above every copied write"
    );

    // Every key read from the target, translated, shows the source's revisions.
    let src_kvs = s.get("/t/", Some(GetOptions::new().with_prefix())).await.unwrap();
    let dst_kvs = t.get("/t/", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(src_kvs.kvs().len(), 200);
    // The record itself sits under the reserved prefix, which the proxy hides from clients.
    let tenant: Vec<_> = dst_kvs
        .kvs()
        .iter()
        .filter(|kv| !kv.key().starts_with(b"/t/\x00"))
        .collect();
    assert_eq!(tenant.len(), 200);
    for (a, b) in src_kvs.kvs().iter().zip(tenant) {
        let seen = tr.kv_to_virtual(
            b.key(),
            Revisions {
                create: b.create_revision(),
                modified: b.mod_revision(),
                version: b.version(),
            },
        );
        assert_eq!(
            seen,
            Revisions {
                create: a.create_revision(),
                modified: a.mod_revision(),
                version: a.version(),
            },
            "{:?}",
            a.key_str()
        );
    }
    // A write to the target after the commit shows up above S.
    let after = t
        .put("/t/k000", "new", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    assert_eq!(tr.to_virtual(after), s_rev + (after - t_rev));
}

/// The tenant's key count at a past revision leaves out cutover's keys as they were at
/// that revision: one written since (the migration's status, say) must not make the
/// count one short. (It used to subtract cutover's keys as of now, and a migration's
/// verification then found one key more on the target than on the source.)
#[tokio::test]
async fn a_count_at_a_past_revision_leaves_out_cutovers_keys_of_that_revision() {
    use cutover::migrate::ops::count_tenant;
    let etcd = Etcd::start().await;
    let mut c = client(&etcd.endpoint).await;
    let ds = datastore("default", &etcd);
    let range = KeyRange {
        start: Bytes::from_static(b"/t/"),
        end: Bytes::from_static(b"/t0"),
    };
    let reserved = Bytes::from_static(b"/t/\0cutover/");
    c.put("/t/a", "1", None).await.unwrap();
    let at = c.put("/t/b", "2", None).await.unwrap().header().unwrap().revision();
    c.put("/t/\0cutover/status", "x", None).await.unwrap();
    assert_eq!(count_tenant(&ds, &range, &reserved, at).await.unwrap(), 2);
    assert_eq!(count_tenant(&ds, &range, &reserved, 0).await.unwrap(), 2);
}
