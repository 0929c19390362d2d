//! The Copying phase of a migration, between two real etcd servers: pinned revision,
//! pages, batched Txns, leases first, the key map K, and what it refuses.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use cutover::config::DataStore as DataStoreConfig;
use cutover::metrics::Metrics;
use cutover::migrate::copy::{copy_range, CopyError, CopyOptions, KeyRange};
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
    assert_eq!(out.lease_ids.len(), 1, "0x88 was taken on the target and got a new ID");
    let new_88 = out.lease_ids[&0x88];
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
