//! Coverage through the `etcd-client` crate: the same calls against one etcd directly and
//! against another with the same history through cutover must give the same results.
//! Only what differs by nature between two clusters (cluster and member IDs, lease IDs,
//! URLs, sizes) is left out of the comparison.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, KeyValue, LeaseGrantOptions,
    LeaseTimeToLiveOptions, Permission, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions,
};

use crate::support::{client, Etcd, Proxy};

/// A key-value as compared: everything but the lease ID, which differs by nature.
fn kv(k: &KeyValue) -> (String, String, i64, i64, i64, bool) {
    (
        k.key_str().unwrap().to_string(),
        k.value_str().unwrap().to_string(),
        k.create_revision(),
        k.mod_revision(),
        k.version(),
        k.lease() != 0,
    )
}

fn op_responses(r: &etcd_client::TxnResponse) -> Vec<String> {
    r.op_responses()
        .into_iter()
        .map(|op| match op {
            TxnOpResponse::Put(p) => format!("put rev={}", p.header().unwrap().revision()),
            TxnOpResponse::Get(g) => format!("get {:?}", g.kvs().iter().map(kv).collect::<Vec<_>>()),
            TxnOpResponse::Delete(d) => format!("del {}", d.deleted()),
            TxnOpResponse::Txn(t) => format!("txn {}", t.succeeded()),
        })
        .collect()
}

async fn run_kv_script(c: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in [("a/1", "x"), ("a/2", "yy"), ("a/3", "z"), ("b/1", "w"), ("a/2", "y2")] {
        let r = c.put(k, v, Some(PutOptions::new().with_prev_key())).await.unwrap();
        out.push(format!(
            "put {k} rev={} prev={:?}",
            r.header().unwrap().revision(),
            r.prev_key().map(kv)
        ));
    }
    let cases: Vec<(&str, GetOptions)> = vec![
        ("prefix", GetOptions::new().with_prefix()),
        ("limit", GetOptions::new().with_prefix().with_limit(2)),
        ("rev", GetOptions::new().with_prefix().with_revision(3)),
        ("keys-only", GetOptions::new().with_prefix().with_keys_only()),
        ("count-only", GetOptions::new().with_prefix().with_count_only()),
        (
            "sort",
            GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Value, SortOrder::Descend),
        ),
        (
            "sort-mod",
            GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Mod, SortOrder::Ascend),
        ),
        ("from-key", GetOptions::new().with_from_key()),
        ("range", GetOptions::new().with_range("a/3")),
        ("min-mod", GetOptions::new().with_prefix().with_min_mod_revision(4)),
        ("serializable", GetOptions::new().with_prefix().with_serializable()),
    ];
    for (name, opts) in cases {
        let key = if name == "from-key" || name == "range" {
            "a/1"
        } else {
            "a/"
        };
        let r = c.get(key, Some(opts)).await.unwrap();
        out.push(format!(
            "get {name} rev={} count={} more={} kvs={:?}",
            r.header().unwrap().revision(),
            r.count(),
            r.more(),
            r.kvs().iter().map(kv).collect::<Vec<_>>()
        ));
    }
    // Read-only Txns: of serializable reads, and of compares only.
    let serializable = || Some(GetOptions::new().with_serializable());
    let read_only = [
        (
            "serializable",
            Txn::new()
                .when([Compare::version("a/1", CompareOp::Greater, 0)])
                .and_then([TxnOp::get("a/1", serializable()), TxnOp::get("a/2", serializable())])
                .or_else([TxnOp::get("b/1", serializable())]),
        ),
        (
            "compares-only",
            Txn::new().when([Compare::value("a/1", CompareOp::Equal, "x")]),
        ),
        (
            "compares-only-failing",
            Txn::new().when([Compare::value("a/1", CompareOp::Equal, "no")]),
        ),
    ];
    for (name, txn) in read_only {
        let r = c.txn(txn).await.unwrap();
        out.push(format!(
            "txn {name} succeeded={} ops={:?}",
            r.succeeded(),
            op_responses(&r)
        ));
    }
    let r = c
        .delete("a/", Some(DeleteOptions::new().with_prefix().with_prev_key()))
        .await
        .unwrap();
    out.push(format!(
        "del deleted={} prev={:?}",
        r.deleted(),
        r.prev_kvs().iter().map(kv).collect::<Vec<_>>()
    ));

    // A kube-style update: compare mod_revision, put, else read.
    let cur = c.get("b/1", None).await.unwrap().kvs()[0].mod_revision();
    for rev in [cur, cur - 1] {
        let txn = Txn::new()
            .when([Compare::mod_revision("b/1", CompareOp::Equal, rev)])
            .and_then([TxnOp::put("b/1", format!("at{rev}"), None)])
            .or_else([TxnOp::get("b/1", None)]);
        let r = c.txn(txn).await.unwrap();
        out.push(format!("txn succeeded={} ops={:?}", r.succeeded(), op_responses(&r)));
    }
    // A nested Txn, and compares on value, version and create revision.
    let nested = Txn::new()
        .when([
            Compare::value("b/1", CompareOp::NotEqual, "nope"),
            Compare::version("b/1", CompareOp::Greater, 0),
        ])
        .and_then([TxnOp::txn(
            Txn::new()
                .when([Compare::create_revision("zz", CompareOp::Equal, 0)])
                .and_then([TxnOp::put("zz", "1", None)]),
        )]);
    let r = c.txn(nested).await.unwrap();
    out.push(format!(
        "nested succeeded={} n={}",
        r.succeeded(),
        r.op_responses().len()
    ));
    let r = c.compact(3, None).await.unwrap();
    out.push(format!("compact rev={}", r.header().unwrap().revision()));
    out
}

#[tokio::test]
async fn kv_and_txn_match_direct_etcd() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let proxy = Proxy::start_for(&[&b]).await;
    let direct = run_kv_script(&mut client(&a.endpoint).await).await;
    let proxied = run_kv_script(&mut client(&proxy.endpoint).await).await;
    for (d, p) in direct.iter().zip(&proxied) {
        assert_eq!(d, p, "direct vs through cutover");
    }
    assert_eq!(direct.len(), proxied.len());
}

/// Watches with prefix, prev_kv and a past start revision, and a progress request.
async fn run_watch_script(c: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..3 {
        c.put(format!("w/{i}"), "v0", None).await.unwrap();
    }
    // From revision 2: replays history, with previous values.
    let (mut watcher, mut stream) = c
        .watch(
            "w/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_prev_key()
                    .with_start_revision(2)
                    .with_progress_notify(),
            ),
        )
        .await
        .unwrap();
    // etcd-client has already read the "created" answer.
    out.push(format!("id={}", watcher.watch_id()));
    c.put("w/1", "v1", None).await.unwrap();
    c.delete("w/0", None).await.unwrap();
    let mut events = Vec::new();
    while events.len() < 5 {
        let r = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("events arrive")
            .unwrap()
            .unwrap();
        for e in r.events() {
            events.push(format!(
                "{:?} {:?} prev={:?}",
                e.event_type(),
                e.kv().map(kv),
                e.prev_kv().map(kv)
            ));
            assert!(matches!(e.event_type(), EventType::Put | EventType::Delete));
        }
    }
    out.extend(events);
    watcher.request_progress().await.unwrap();
    let p = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("progress")
        .unwrap()
        .unwrap();
    out.push(format!(
        "progress events={} rev={}",
        p.events().len(),
        p.header().unwrap().revision()
    ));
    watcher.cancel().await.unwrap();
    let cancel = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("cancel")
        .unwrap()
        .unwrap();
    out.push(format!("canceled={}", cancel.canceled()));
    out
}

#[tokio::test]
async fn watch_matches_direct_etcd() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let proxy = Proxy::start_for(&[&b]).await;
    let direct = run_watch_script(&mut client(&a.endpoint).await).await;
    let proxied = run_watch_script(&mut client(&proxy.endpoint).await).await;
    assert_eq!(direct, proxied, "direct vs through cutover");
    assert_eq!(proxied.len(), 8);
}

async fn run_lease_script(c: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    let g = c.lease_grant(60, None).await.unwrap();
    out.push(format!("grant ttl={} err={:?}", g.ttl(), g.error()));
    let id = g.id();
    let fixed = c
        .lease_grant(30, Some(LeaseGrantOptions::new().with_id(0x1000)))
        .await
        .unwrap();
    out.push(format!("grant fixed id={:x} ttl={}", fixed.id(), fixed.ttl()));
    c.put("l/1", "v", Some(PutOptions::new().with_lease(id))).await.unwrap();
    let (mut keeper, mut stream) = c.lease_keep_alive(id).await.unwrap();
    for _ in 0..3 {
        keeper.keep_alive().await.unwrap();
        let r = stream.message().await.unwrap().unwrap();
        out.push(format!("keepalive same-id={} ttl={}", r.id() == id, r.ttl()));
    }
    let t = c
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    out.push(format!(
        "ttl granted={} keys={:?} ttl-positive={}",
        t.granted_ttl(),
        t.keys(),
        t.ttl() > 0
    ));
    let mut leases: Vec<bool> = c
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id() == id)
        .collect();
    leases.sort();
    out.push(format!("leases {leases:?}"));
    c.lease_revoke(id).await.unwrap();
    let r = c.get("l/1", None).await.unwrap();
    out.push(format!("after revoke count={}", r.count()));
    out
}

#[tokio::test]
async fn leases_match_direct_etcd() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let proxy = Proxy::start_for(&[&b]).await;
    let direct = run_lease_script(&mut client(&a.endpoint).await).await;
    let proxied = run_lease_script(&mut client(&proxy.endpoint).await).await;
    assert_eq!(direct, proxied, "direct vs through cutover");
}

async fn run_cluster_and_maintenance(c: &mut Client, member_url: &str) -> Vec<String> {
    let mut out = Vec::new();
    c.put("m", "1", None).await.unwrap();
    let members = c.member_list().await.unwrap();
    out.push(format!("members={}", members.members().len()));
    assert!(members.members()[0].client_urls().iter().any(|u| u == member_url));
    let s = c.status().await.unwrap();
    out.push(format!(
        "status version={} leader-is-self={} raft-index>0={}",
        s.version(),
        s.leader() == s.header().unwrap().member_id(),
        s.raft_index() > 0
    ));
    let h = c.hash_kv(0).await.unwrap();
    out.push(format!("hashkv compact={}", h.compact_version()));
    c.defragment().await.unwrap();
    out.push("defrag ok".into());
    let alarms = c
        .alarm(etcd_client::AlarmAction::Get, etcd_client::AlarmType::None, None)
        .await
        .unwrap();
    out.push(format!("alarms={}", alarms.alarms().len()));
    let mut snap = c.snapshot().await.unwrap();
    let mut bytes = 0usize;
    while let Some(part) = snap.message().await.unwrap() {
        bytes += part.blob().len();
    }
    out.push(format!("snapshot non-empty={}", bytes > 0));
    out
}

#[tokio::test]
async fn cluster_and_maintenance_match_direct_etcd() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let proxy = Proxy::start_for(&[&b]).await;
    let direct = run_cluster_and_maintenance(&mut client(&a.endpoint).await, &a.client_url).await;
    let proxied = run_cluster_and_maintenance(&mut client(&proxy.endpoint).await, &b.client_url).await;
    assert_eq!(direct, proxied, "direct vs through cutover");
}

async fn run_auth_script(c: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    c.user_add("root", "rootpw", None).await.unwrap();
    c.user_grant_role("root", "root").await.unwrap();
    c.role_add("app").await.unwrap();
    c.role_grant_permission("app", Permission::read_write("app/").with_prefix())
        .await
        .unwrap();
    c.user_add("bob", "bobpw", None).await.unwrap();
    c.user_grant_role("bob", "app").await.unwrap();
    out.push(format!("user get {:?}", c.user_get("bob").await.unwrap().roles()));
    out.push(format!("user list {:?}", c.user_list().await.unwrap().users()));
    out.push(format!("role list {:?}", c.role_list().await.unwrap().roles()));
    let perms = c.role_get("app").await.unwrap();
    out.push(format!(
        "role get {:?}",
        perms
            .permissions()
            .iter()
            .map(|p| (p.key().to_vec(), p.range_end().to_vec()))
            .collect::<Vec<_>>()
    ));
    c.auth_enable().await.unwrap();
    out
}

#[tokio::test]
async fn auth_matches_direct_etcd_and_tokens_pass_through() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let proxy = Proxy::start_for(&[&b]).await;
    let direct = run_auth_script(&mut client(&a.endpoint).await).await;
    let proxied = run_auth_script(&mut client(&proxy.endpoint).await).await;
    assert_eq!(direct, proxied, "direct vs through cutover");
    // bob's token travels through the proxy as gRPC metadata.
    let opts = etcd_client::ConnectOptions::new().with_user("bob", "bobpw");
    let mut bob = Client::connect([proxy.endpoint.as_str()], Some(opts)).await.unwrap();
    bob.put("app/x", "1", None).await.expect("bob may write app/");
    assert_eq!(bob.get("app/x", None).await.unwrap().kvs()[0].value(), b"1");
    let root_opts = etcd_client::ConnectOptions::new().with_user("root", "rootpw");
    let mut root = Client::connect([proxy.endpoint.as_str()], Some(root_opts))
        .await
        .unwrap();
    root.user_change_password("bob", "newpw").await.unwrap();
    root.user_revoke_role("bob", "app").await.unwrap();
    root.role_revoke_permission(
        "app",
        "app/",
        Some(etcd_client::RoleRevokePermissionOptions::new().with_prefix()),
    )
    .await
    .unwrap();
    root.role_delete("app").await.unwrap();
    root.user_delete("bob").await.unwrap();
    root.auth_disable().await.unwrap();
    let mut anon = client(&proxy.endpoint).await;
    assert_eq!(anon.user_list().await.unwrap().users(), ["root"]);
}

/// One KV call whose answer is kept as the bytes that came over the wire.
async fn raw_call<T: prost::Message + Send + 'static>(endpoint: &str, method: &str, request: T) -> bytes::Bytes {
    let addr = endpoint.trim_start_matches("http://");
    let channel = crate::common::connect_channel(addr).await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::try_from(format!("/etcdserverpb.KV/{method}")).unwrap();
    grpc.unary(
        tonic::Request::new(request),
        path,
        cutover::codec::KeepEncoded::<T>::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{method} through {endpoint}: {e}"))
    .into_inner()
}

/// With no translation active, cutover passes etcd's answers on as etcd encoded them: a
/// linearizable Range (sent inside the read guard, a Txn) and a read-only Txn come back
/// byte for byte as the same etcd answers them directly.
#[tokio::test]
async fn answers_pass_through_byte_for_byte() {
    use cutover::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
    use cutover::proto::etcdserverpb::{request_op, Compare, RangeRequest, RequestOp, TxnRequest};

    let etcd = Etcd::start().await;
    let proxy = Proxy::start_for(&[&etcd]).await;
    let mut c = client(&proxy.endpoint).await;
    for i in 0..40 {
        c.put(format!("/bytes/{i:02}"), "v".repeat(i * 7), None).await.unwrap();
    }
    let range = |key: &str, end: &str, limit: i64| RangeRequest {
        key: bytes::Bytes::copy_from_slice(key.as_bytes()),
        range_end: bytes::Bytes::copy_from_slice(end.as_bytes()),
        limit,
        ..Default::default()
    };
    let ranges = [
        range("/bytes/", "/bytes0", 0),
        range("/bytes/", "/bytes0", 5),
        range("/bytes/07", "", 0),
        range("/none", "", 0),
    ];
    for r in ranges {
        let direct = raw_call(&etcd.endpoint, "Range", r.clone()).await;
        let proxied = raw_call(&proxy.endpoint, "Range", r.clone()).await;
        assert!(direct.len() > 10, "etcd answered {direct:?}");
        assert_eq!(direct, proxied, "Range {r:?}: direct vs through cutover");
    }
    let read_txn = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Greater as i32,
            target: CompareTarget::Mod as i32,
            key: bytes::Bytes::from_static(b"/bytes/03"),
            target_union: Some(TargetUnion::ModRevision(1)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(range("/bytes/1", "/bytes/2", 0))),
        }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(range("/bytes/2", "", 0))),
        }],
    };
    let direct = raw_call(&etcd.endpoint, "Txn", read_txn.clone()).await;
    let proxied = raw_call(&proxy.endpoint, "Txn", read_txn).await;
    assert_eq!(direct, proxied, "read-only Txn: direct vs through cutover");
}
