//! The datastore-enforced write fence: every write travels in a guard Txn on the fence
//! key, so a datastore holding that key refuses tenant writes from any proxy. Here the
//! fence key is written straight into etcd, as a migrating replica would.

use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use tonic::Code;

use crate::support::{client, eventually, Etcd, Proxy};

const FREEZE: &str =
    "the current Control Plane is in freezing mode due to a maintenance mode, all the changes are blocked";
const FENCE_KEY: &[u8] = b"\x00cutover/fence";

fn config(etcd: &Etcd, extra: &str) -> String {
    format!(
        "{extra}dataStore: default\ndataStores:\n  default:\n    endpoints: [\"{}\"]\n",
        etcd.endpoint
    )
}

fn expect_frozen<T: std::fmt::Debug>(r: Result<T, etcd_client::Error>) {
    match r {
        Err(etcd_client::Error::GRpcStatus(s)) => {
            assert_eq!((s.code(), s.message()), (Code::Unavailable, FREEZE), "{s:?}");
        }
        other => panic!("expected the freeze error, got {other:?}"),
    }
}

#[tokio::test]
async fn reject_mode_refuses_every_write_while_the_fence_key_exists() {
    let etcd = Etcd::start().await;
    let proxy = Proxy::start(&config(&etcd, "fence: {mode: reject}\n")).await;
    let mut direct = client(&etcd.endpoint).await;
    let mut c = client(&proxy.endpoint).await;
    c.put("a", "1", None).await.expect("unfenced writes pass");

    direct.put(FENCE_KEY, "migration m1", None).await.unwrap();
    expect_frozen(c.put("a", "2", None).await);
    expect_frozen(c.delete("a", None).await);
    let kube_update = Txn::new()
        .when([Compare::mod_revision("a", CompareOp::Equal, 2)])
        .and_then([TxnOp::put("a", "3", None)])
        .or_else([TxnOp::get("a", None)]);
    expect_frozen(c.txn(kube_update.clone()).await);
    // Reads are served while fenced.
    assert_eq!(c.get("a", None).await.unwrap().kvs()[0].value(), b"1");
    // Nothing of the refused writes reached the store.
    let a = direct.get("a", None).await.unwrap();
    assert_eq!((a.kvs()[0].value(), a.kvs()[0].mod_revision()), (&b"1"[..], 2));

    direct.delete(FENCE_KEY, None).await.unwrap();
    let t = c
        .txn(kube_update)
        .await
        .expect("writes flow again once the fence is gone");
    assert!(t.succeeded(), "the compare on the pre-fence mod_revision still holds");
    let m = proxy.metrics().await;
    assert!(m.contains("cutover_fenced_writes_total{outcome=\"rejected\"} 3"), "{m}");
}

#[tokio::test]
async fn hold_mode_releases_held_writes_when_the_fence_lifts() {
    let etcd = Etcd::start().await;
    let proxy = Proxy::start(&config(&etcd, "fence: {mode: hold, holdTimeout: 20s}\n")).await;
    let mut direct = client(&etcd.endpoint).await;
    direct.put(FENCE_KEY, "migration m2", None).await.unwrap();

    let endpoint = proxy.endpoint.clone();
    let writer = tokio::spawn(async move {
        let mut c = client(&endpoint).await;
        let started = Instant::now();
        let r = c.put("held", "v", None).await;
        (r.map(|r| r.header().map(|h| h.revision())), started.elapsed())
    });
    // The write is parked behind the fence: not in the store while the fence stands.
    let admin = proxy.admin.clone();
    eventually("the write is held behind the fence", Duration::from_secs(10), || {
        let url = format!("{admin}/metrics");
        async move {
            let m = reqwest::get(url).await.unwrap().text().await.unwrap();
            m.lines().any(|l| l == "cutover_held_writes 1")
        }
    })
    .await;
    assert_eq!(direct.get("held", None).await.unwrap().count(), 0);
    direct.delete(FENCE_KEY, None).await.unwrap();

    let (result, _) = writer.await.unwrap();
    let rev = result.expect("zero client-visible errors in hold mode");
    let held = direct.get("held", None).await.unwrap();
    assert_eq!(held.kvs()[0].value(), b"v");
    assert_eq!(
        Some(held.kvs()[0].mod_revision()),
        rev,
        "applied exactly once, at the revision the client saw"
    );
    assert_eq!(held.kvs()[0].version(), 1);
    let m = proxy.metrics().await;
    assert!(m.contains("cutover_fenced_writes_total{outcome=\"held\"} 1"), "{m}");
    assert!(m.lines().any(|l| l == "cutover_held_writes 0"), "{m}");
}

#[tokio::test]
async fn a_held_write_is_refused_when_the_hold_times_out() {
    let etcd = Etcd::start().await;
    let proxy = Proxy::start(&config(&etcd, "fence: {holdTimeout: 400ms}\n")).await;
    let mut direct = client(&etcd.endpoint).await;
    direct.put(FENCE_KEY, "migration m3", None).await.unwrap();
    let mut c = client(&proxy.endpoint).await;
    let started = Instant::now();
    expect_frozen(c.put("k", "v", None).await);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "the write was held before being refused ({waited:?})"
    );
    assert_eq!(direct.get("k", None).await.unwrap().count(), 0);
    let m = proxy.metrics().await;
    assert!(
        m.contains("cutover_fenced_writes_total{outcome=\"held_rejected\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn the_fence_key_lives_under_the_tenant_prefix() {
    let etcd = Etcd::start().await;
    let proxy = Proxy::start(&config(&etcd, "prefix: /tenant-a/\nfence: {mode: reject}\n")).await;
    let mut direct = client(&etcd.endpoint).await;
    let mut c = client(&proxy.endpoint).await;
    // Another tenant's fence does not stop this one.
    direct.put(FENCE_KEY, "someone else", None).await.unwrap();
    c.put("/tenant-a/registry/x", "1", None)
        .await
        .expect("not fenced by another tenant's key");
    direct
        .put(b"/tenant-a/\x00cutover/fence".to_vec(), "migration m4", None)
        .await
        .unwrap();
    expect_frozen(c.put("/tenant-a/registry/x", "2", None).await);
}

#[tokio::test]
async fn reserved_keys_are_hidden_from_reads_and_watches_closed_to_writes_and_deleted_around() {
    use etcd_client::{DeleteOptions, GetOptions, WatchOptions};
    let etcd = Etcd::start().await;
    let proxy = Proxy::start(&config(&etcd, "")).await;
    let mut direct = client(&etcd.endpoint).await;
    let mut c = client(&proxy.endpoint).await;
    // A reserved record (as a migration leaves on a target) and tenant keys around it.
    direct
        .put(b"\x00cutover/translation/params".to_vec(), "{}", None)
        .await
        .unwrap();
    direct
        .put(b"\x00cutover/translation/keys/0".to_vec(), "k", None)
        .await
        .unwrap();
    for k in ["a", "b", "c"] {
        c.put(k, "v", None).await.unwrap();
    }
    let everything = GetOptions::new().with_from_key();
    let all = c.get(b"\x00".to_vec(), Some(everything.clone())).await.unwrap();
    let keys: Vec<&[u8]> = all.kvs().iter().map(|kv| kv.key()).collect();
    assert_eq!(keys, [&b"a"[..], b"b", b"c"]);
    assert_eq!(all.count(), 3);
    let two = c
        .get(b"\x00".to_vec(), Some(everything.clone().with_limit(2)))
        .await
        .unwrap();
    assert_eq!((two.kvs().len(), two.more(), two.count()), (2, true, 3));
    assert_eq!(two.kvs()[0].key(), b"a");
    let counted = c
        .get(b"\x00".to_vec(), Some(everything.with_count_only()))
        .await
        .unwrap();
    assert_eq!(counted.count(), 3);

    let denied = |r: Result<(), etcd_client::Error>| match r {
        Err(etcd_client::Error::GRpcStatus(s)) => {
            assert_eq!(
                (s.code(), s.message()),
                (Code::PermissionDenied, "etcdserver: permission denied")
            )
        }
        other => panic!("expected permission denied, got {other:?}"),
    };
    denied(c.put(FENCE_KEY, "x", None).await.map(|_| ()));
    // A delete of everything deletes the tenant's keys, as etcd would, and leaves cutover's.
    let gone = c
        .delete(b"\x00".to_vec(), Some(DeleteOptions::new().with_from_key()))
        .await
        .expect("a delete across the reserved keys");
    assert_eq!(gone.deleted(), 3);
    let own = direct
        .get(
            b"\x00cutover/".to_vec(),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(own.count(), 2, "cutover's keys are left");
    denied(
        c.txn(
            Txn::new()
                .when([Compare::version(FENCE_KEY, CompareOp::Equal, 0)])
                .and_then([TxnOp::put("a", "w", None)]),
        )
        .await
        .map(|_| ()),
    );
    assert_eq!(
        direct.get(FENCE_KEY, None).await.unwrap().count(),
        0,
        "no fence was written"
    );

    // A watch on everything sees the tenant's changes only.
    let (_w, mut stream) = c
        .watch(b"\x00".to_vec(), Some(WatchOptions::new().with_from_key()))
        .await
        .unwrap();
    direct
        .put(b"\x00cutover/translation/params".to_vec(), "{2}", None)
        .await
        .unwrap();
    c.put("d", "v", None).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event")
        .unwrap()
        .unwrap();
    let seen: Vec<&[u8]> = r.events().iter().filter_map(|e| e.kv().map(|kv| kv.key())).collect();
    assert_eq!(seen, [&b"d"[..]]);
}

#[tokio::test]
async fn reads_inside_a_txn_do_not_show_reserved_keys() {
    let etcd = Etcd::start().await;
    let proxy = Proxy::start(&config(&etcd, "")).await;
    let mut direct = client(&etcd.endpoint).await;
    let mut c = client(&proxy.endpoint).await;
    direct
        .put(b"\x00cutover/translation/params".to_vec(), "{}", None)
        .await
        .unwrap();
    c.put("a", "1", None).await.unwrap();
    let everything = etcd_client::GetOptions::new().with_from_key();
    let t = c
        .txn(Txn::new().and_then([
            TxnOp::get(b"\x00".to_vec(), Some(everything.clone())),
            TxnOp::txn(Txn::new().and_then([TxnOp::get(b"\x00".to_vec(), Some(everything))])),
        ]))
        .await
        .unwrap();
    for op in t.op_responses() {
        let get = match op {
            etcd_client::TxnOpResponse::Get(g) => g,
            etcd_client::TxnOpResponse::Txn(inner) => match inner.op_responses().remove(0) {
                etcd_client::TxnOpResponse::Get(g) => g,
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        let keys: Vec<&[u8]> = get.kvs().iter().map(|kv| kv.key()).collect();
        assert_eq!((keys, get.count()), (vec![&b"a"[..]], 1));
    }
}
