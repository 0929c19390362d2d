//! One tenant cannot read, break or destroy another's: configurations that would let
//! cutover delete data it does not own are refused, and so is every cluster-wide RPC of a
//! tenant (a proxy with a `prefix`) that is not the operator.

use std::time::Duration;

use cutover::proto::etcdserverpb::alarm_request::AlarmAction;
use cutover::proto::etcdserverpb::auth_client::AuthClient;
use cutover::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use cutover::proto::etcdserverpb::{AlarmRequest, AlarmType, AuthStatusRequest};
use serde_json::json;

use crate::migrate::{wait_end, TENANT};
use crate::support::{client, etcdctl, eventually, Etcd, Proxy, TlsFiles};

/// Keys the tenant wrote through the proxy, as the proxy lists them.
async fn tenant_keys(proxy: &Proxy) -> usize {
    let mut c = client(&proxy.endpoint).await;
    c.get(TENANT, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .expect("list through the proxy")
        .kvs()
        .len()
}

/// A serializable read over the whole prefix (where cutover keeps its own keys) answers
/// as the linearizable one does: the tenant's keys, and none of cutover's.
#[tokio::test]
async fn a_serializable_read_over_the_whole_prefix_shows_the_tenants_keys_only() {
    let etcd = Etcd::start().await;
    let proxy = Proxy::start(&format!(
        "prefix: {TENANT}\ndataStore: default\ndataStores:\n  default:\n    endpoints: [\"{}\"]\n",
        etcd.endpoint
    ))
    .await;
    let mut c = client(&proxy.endpoint).await;
    for i in 0..5 {
        c.put(format!("{TENANT}k{i}"), "v", None).await.unwrap();
    }
    let all = || etcd_client::GetOptions::new().with_prefix();
    let linearizable = c.get(TENANT, Some(all())).await.unwrap();
    let serializable = c.get(TENANT, Some(all().with_serializable())).await.unwrap();
    let keys = |r: &etcd_client::GetResponse| {
        r.kvs()
            .iter()
            .map(|kv| (kv.key_str().unwrap().to_string(), kv.mod_revision()))
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&serializable), keys(&linearizable));
    assert_eq!(serializable.count(), 5);
    let counted = c
        .get(TENANT, Some(all().with_serializable().with_count_only()))
        .await
        .unwrap();
    assert_eq!(counted.count(), 5);
}

#[tokio::test]
async fn the_same_etcd_under_two_names_is_refused_before_anything_is_written() {
    let etcd = Etcd::start().await;
    let port = etcd.endpoint.rsplit(':').next().unwrap();
    let proxy = Proxy::start(&format!(
        "prefix: {TENANT}\ndataStore: default\ndataStores:\n  default:\n    endpoints: [\"{}\"]\n  alias:\n    endpoints: [\"localhost:{port}\"]\n",
        etcd.endpoint
    ))
    .await;
    let mut c = client(&proxy.endpoint).await;
    for i in 0..5 {
        c.put(format!("{TENANT}k{i}"), "v", None).await.unwrap();
    }
    let (code, body) = proxy
        .admin_post("/v1/migrations", json!({"to": "alias", "overwrite": true}))
        .await;
    assert_eq!(code, 202, "{body}");
    let view = wait_end(&proxy).await;
    assert_eq!(view["outcome"], "Failed", "{view}");
    let error = view["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("\"default\" and \"alias\" are the same etcd cluster"),
        "{view}"
    );
    assert_eq!(tenant_keys(&proxy).await, 5, "the tenant's keys are all there");
    c.put(format!("{TENANT}after"), "v", None)
        .await
        .expect("writes are served after the refusal");
    assert_eq!(proxy.status().await["dataStore"], "default");

    // Cleanup of the alias would delete the live tenant.
    let (code, body) = proxy.admin_post("/v1/cleanup", json!({"datastore": "alias"})).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("are the same etcd cluster"),
        "{body}"
    );
    assert_eq!(tenant_keys(&proxy).await, 6);
}

#[tokio::test]
async fn without_a_prefix_overwrite_and_cleanup_need_the_whole_keyspace_consent() {
    let (a, b) = tokio::join!(Etcd::start(), Etcd::start());
    // Another tenant's key on the target: with no prefix, "the tenant's range" is all of it.
    let mut direct_b = client(&b.endpoint).await;
    direct_b.put("/other-tenant/secret", "keep me", None).await.unwrap();
    let proxy = Proxy::start(&format!(
        "dataStore: default\ndataStores:\n  default:\n    endpoints: [\"{}\"]\n  dedicated:\n    endpoints: [\"{}\"]\n",
        a.endpoint, b.endpoint
    ))
    .await;
    let mut c = client(&proxy.endpoint).await;
    c.put("/mine", "v", None).await.unwrap();

    let (code, body) = proxy
        .admin_post("/v1/migrations", json!({"to": "dedicated", "overwrite": true}))
        .await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("--delete-whole-keyspace"),
        "{body}"
    );
    let kept = direct_b.get("/other-tenant/secret", None).await.unwrap();
    assert_eq!(kept.kvs().len(), 1, "the target's keys are untouched");

    // The CLI names the flag, and sends it.
    let connect = ["--admin", &proxy.admin, "--token-file"];
    let token = proxy.dir.path().join("admin-token");
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args(args)
            .args(connect)
            .arg(&token)
            .output()
            .expect("cutover runs")
    };
    let out = cli(&["migrate", "--to", "dedicated", "--overwrite"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--delete-whole-keyspace"),
        "{out:?}"
    );
    let out = cli(&[
        "migrate",
        "--to",
        "dedicated",
        "--overwrite",
        "--delete-whole-keyspace",
        "--wait",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(proxy.status().await["dataStore"], "dedicated");
    assert_eq!(
        direct_b.get("/other-tenant/secret", None).await.unwrap().kvs().len(),
        0,
        "with consent, the whole key space was the tenant's"
    );

    // Cleanup of the store it left: the same consent.
    let out = cli(&["cleanup", "--datastore", "default"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--delete-whole-keyspace"),
        "{out:?}"
    );
    let mut direct_a = client(&a.endpoint).await;
    assert_eq!(direct_a.get("/mine", None).await.unwrap().kvs().len(), 1);
    let out = cli(&["cleanup", "--datastore", "default", "--delete-whole-keyspace"]);
    assert!(out.status.success(), "{out:?}");
    eventually("the old store is empty", Duration::from_secs(5), || async {
        direct_a.clone().get("/mine", None).await.unwrap().kvs().is_empty()
    })
    .await;
}

/// etcdctl's combined output of a command that must fail with etcd's permission error.
fn denied(endpoint: &str, extra: &[&str], args: &[&str]) -> String {
    let mut all: Vec<&str> = extra.to_vec();
    all.extend_from_slice(args);
    let out = etcdctl(endpoint, &all);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "{args:?} succeeded through the tenant's proxy: {text}"
    );
    assert!(text.contains("etcdserver: permission denied"), "{args:?}: {text}");
    text
}

/// Everything in the table of the README's tenancy section that acts on the whole
/// datastore, tried by a tenant: refused with etcd's own error, and nothing changed on
/// the datastore. What the tenant needs (member list, status, alarm list, auth status)
/// still answers; its compaction is answered and has no effect.
#[tokio::test]
async fn a_tenant_cannot_act_on_the_shared_datastore() {
    let etcd = Etcd::start().await;
    let mut direct = client(&etcd.endpoint).await;
    direct.put("/tenant-b/secret", "b's", None).await.unwrap();
    let b_lease = direct.lease_grant(600, None).await.unwrap().id();
    let proxy = Proxy::start(&format!(
        "prefix: /tenant-a/\ndataStore: default\ndataStores:\n  default:\n    endpoints: [\"{}\"]\n",
        etcd.endpoint
    ))
    .await;
    let ep = proxy.endpoint.as_str();
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap.db");
    let snap = snap.to_str().unwrap();
    for args in [
        &["snapshot", "save", snap][..],
        &["user", "add", "mallory:pw"],
        &["user", "list"],
        &["role", "add", "r"],
        &["role", "list"],
        &["auth", "enable"],
        &["auth", "disable"],
        &["member", "add", "m2", "--peer-urls=http://127.0.0.1:1", "--learner"],
        &["member", "remove", "1234"],
        &["member", "update", "1234", "--peer-urls=http://127.0.0.1:1"],
        &["member", "promote", "1234"],
        &["defrag"],
        &["move-leader", "1234"],
        &["endpoint", "hashkv"],
    ] {
        denied(ep, &[], args);
    }
    // etcdctl's `alarm disarm` sends nothing when no alarm is raised: ask directly.
    let mut maintenance = MaintenanceClient::connect(format!("http://{ep}")).await.unwrap();
    for action in [AlarmAction::Activate, AlarmAction::Deactivate] {
        let err = maintenance
            .alarm(AlarmRequest {
                action: action as i32,
                member_id: 0,
                alarm: AlarmType::Nospace as i32,
            })
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (tonic::Code::PermissionDenied, "etcdserver: permission denied")
        );
    }
    assert!(!std::path::Path::new(snap).exists(), "no snapshot was written");
    // Nothing changed on the datastore.
    let users = direct.user_list().await.unwrap();
    assert!(users.users().is_empty(), "{:?}", users.users());
    // (With auth switched on, this token-less user list would have been refused.)
    assert_eq!(direct.member_list().await.unwrap().members().len(), 1);
    assert!(
        direct.lease_time_to_live(b_lease, None).await.unwrap().ttl() > 0,
        "tenant b's lease lives"
    );

    // What a tenant's apiserver needs still answers.
    for args in [
        &["member", "list"][..],
        &["endpoint", "status"],
        &["endpoint", "health"],
        &["alarm", "list"],
    ] {
        let out = etcdctl(ep, args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let mut auth = AuthClient::connect(format!("http://{ep}")).await.unwrap();
    // etcd 3.5 answers AuthStatus; 3.4 has no such method. Either way it is not refused.
    match auth.auth_status(AuthStatusRequest {}).await {
        Ok(status) => assert!(!status.into_inner().enabled),
        Err(e) => assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}"),
    }
    // A tenant's compaction: answered as etcd would, without effect on the history.
    let mut c = client(ep).await;
    let first = c
        .put("/tenant-a/k", "1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let last = c
        .put("/tenant-a/k", "2", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let answer = c.compact(last, None).await.expect("compaction answered");
    assert_eq!(answer.header().unwrap().revision(), last);
    let old = direct
        .get(
            "/tenant-b/secret",
            Some(etcd_client::GetOptions::new().with_revision(first)),
        )
        .await
        .expect("the datastore's history is still there");
    assert_eq!(old.kvs().len(), 1);
    let future = c.compact(last + 100, None).await.unwrap_err().to_string();
    assert!(
        future.contains("etcdserver: mvcc: required revision is a future revision"),
        "{future}"
    );
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains("cutover_tenant_refused_requests_total{service=\"Maintenance\",method=\"Snapshot\"} 1"),
        "{metrics}"
    );
}

/// The operator (a verified certificate with a configured common name) may do what a
/// tenant may not; a tenant's certificate on the same listener may not.
#[tokio::test]
async fn the_operator_certificate_may_act_on_the_datastore() {
    let tls = TlsFiles::generate();
    let etcd = Etcd::start().await;
    let proxy = Proxy::start(&format!(
        "prefix: /tenant-a/\ntls:\n  certFile: {}\n  keyFile: {}\n  clientCAFile: {}\n  operatorCommonNames: [root]\ndataStore: default\ndataStores:\n  default:\n    endpoints: [\"{}\"]\n",
        tls.server_cert.display(),
        tls.server_key.display(),
        tls.ca.display(),
        etcd.endpoint
    ))
    .await;
    let https = format!("https://{}", proxy.endpoint);
    let ca = format!("--cacert={}", tls.ca.display());
    let as_tenant = [
        ca.as_str(),
        &format!("--cert={}", tls.tenant_cert.display()),
        &format!("--key={}", tls.tenant_key.display()),
    ]
    .map(str::to_string);
    let as_operator = [
        ca.clone(),
        format!("--cert={}", tls.client_cert.display()),
        format!("--key={}", tls.client_key.display()),
    ];
    let tenant: Vec<&str> = as_tenant.iter().map(String::as_str).collect();
    let operator: Vec<&str> = as_operator.iter().map(String::as_str).collect();
    denied(&https, &tenant, &["user", "add", "alice:pw"]);
    let mut args = operator.clone();
    args.extend(["user", "add", "alice:pw"]);
    let out = etcdctl(&https, &args);
    assert!(out.status.success(), "{out:?}");
    let mut direct = client(&etcd.endpoint).await;
    let users = direct.user_list().await.unwrap();
    assert_eq!(users.users(), ["alice"]);
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap.db");
    let mut args = operator.clone();
    args.extend(["snapshot", "save", snap.to_str().unwrap()]);
    let out = etcdctl(&https, &args);
    assert!(out.status.success(), "{out:?}");
    assert!(snap.exists());
}

/// A tenant reaches only its own leases: another tenant's lease (or one shared with
/// another tenant) cannot be revoked, kept alive or looked into, and is not listed.
#[tokio::test]
async fn a_tenant_reaches_only_its_own_leases() {
    let etcd = Etcd::start().await;
    let mut direct = client(&etcd.endpoint).await;
    let theirs = direct.lease_grant(600, None).await.unwrap().id();
    let put_on = |lease: i64| Some(etcd_client::PutOptions::new().with_lease(lease));
    direct.put("/tenant-b/pod", "b", put_on(theirs)).await.unwrap();
    let shared = direct.lease_grant(600, None).await.unwrap().id();
    direct.put("/tenant-b/x", "b", put_on(shared)).await.unwrap();
    direct.put("/tenant-a/x", "a", put_on(shared)).await.unwrap();
    let proxy = Proxy::start(&format!(
        "prefix: /tenant-a/\ndataStore: default\ndataStores:\n  default:\n    endpoints: [\"{}\"]\n",
        etcd.endpoint
    ))
    .await;
    let ep = proxy.endpoint.as_str();
    let mut c = client(ep).await;
    let mine = c.lease_grant(600, None).await.unwrap().id();
    c.put("/tenant-a/pod", "a", put_on(mine)).await.unwrap();

    for id in [theirs, shared] {
        let hex = format!("{id:x}");
        denied(ep, &[], &["lease", "timetolive", &hex, "--keys"]);
        // A keep-alive gets etcd's answer for a lease it does not have (TTL 0); the
        // stream, which may carry the client's own leases too, stays open.
        let out = etcdctl(ep, &["lease", "keep-alive", "--once", &hex]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success()
                && (text.contains("requested lease not found") || text.contains("expired or revoked")),
            "{text}"
        );
        denied(ep, &[], &["lease", "revoke", &hex]);
    }
    // Nor can it tie its keys to another tenant's lease.
    let mut c2 = client(ep).await;
    for id in [theirs, shared] {
        let err = c2.put("/tenant-a/tied", "a", put_on(id)).await.unwrap_err().to_string();
        assert!(err.contains("etcdserver: permission denied"), "{err}");
        let txn = etcd_client::Txn::new().and_then([etcd_client::TxnOp::put("/tenant-a/tied", "a", put_on(id))]);
        let err = c2.txn(txn).await.unwrap_err().to_string();
        assert!(err.contains("etcdserver: permission denied"), "{err}");
    }
    // Untouched on the datastore.
    for id in [theirs, shared] {
        let ttl = direct.lease_time_to_live(id, None).await.unwrap();
        assert!(ttl.ttl() > 0, "lease {id:x} still lives");
    }
    assert_eq!(direct.get("/tenant-b/pod", None).await.unwrap().kvs().len(), 1);

    // Its own lease: listed, looked into, kept alive, revoked.
    let listed = c.leases().await.unwrap();
    let ids: Vec<i64> = listed.leases().iter().map(|l| l.id()).collect();
    assert_eq!(ids, [mine], "only the tenant's lease is listed");
    let ttl = c
        .lease_time_to_live(mine, Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(ttl.keys(), [b"/tenant-a/pod".to_vec()]);
    let (mut keeper, mut answers) = c.lease_keep_alive(mine).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let answer = answers.message().await.unwrap().expect("a keep-alive answer");
    assert!(answer.ttl() > 0);
    c.lease_revoke(mine).await.unwrap();
    assert!(c.get("/tenant-a/pod", None).await.unwrap().kvs().is_empty());
}

/// An etcd holding one of cutover's own keys under the tenant's prefix (as a migration
/// leaves them), and the tenant's proxy in front of it.
async fn with_a_key_of_cutovers() -> (Etcd, Proxy) {
    let etcd = Etcd::start().await;
    let mut direct = client(&etcd.endpoint).await;
    direct.put("/tenant-a/\0cutover/x", "cutover's", None).await.unwrap();
    let proxy = Proxy::start(&format!(
        "prefix: /tenant-a/\ndataStore: default\ndataStores:\n  default:\n    endpoints: [\"{}\"]\n",
        etcd.endpoint
    ))
    .await;
    (etcd, proxy)
}

/// A delete over the tenant's whole prefix works as on etcd (alone, or in a Txn, nested
/// or not), cutover's own keys under it left alone and left out of the count.
#[tokio::test]
async fn a_delete_over_the_whole_prefix_works_as_on_etcd() {
    let (etcd, proxy) = with_a_key_of_cutovers().await;
    let mut direct = client(&etcd.endpoint).await;
    let mut c = client(&proxy.endpoint).await;
    for k in ["a", "b", "c"] {
        c.put(format!("/tenant-a/{k}"), k, None).await.unwrap();
    }
    // In a Txn, nested or not, the same: one delete's answer, the tenant's keys only.
    let wide = || {
        etcd_client::TxnOp::delete(
            "/tenant-a/",
            Some(etcd_client::DeleteOptions::new().with_prefix().with_prev_key()),
        )
    };
    let txn = etcd_client::Txn::new().and_then([etcd_client::TxnOp::txn(etcd_client::Txn::new().and_then([wide()]))]);
    let resp = c.txn(txn).await.unwrap();
    let etcd_client::TxnOpResponse::Txn(inner) = &resp.op_responses()[0] else {
        panic!("not a Txn answer: {resp:?}");
    };
    let etcd_client::TxnOpResponse::Delete(d) = &inner.op_responses()[0] else {
        panic!("not a delete answer: {inner:?}");
    };
    let keys: Vec<&[u8]> = d.prev_kvs().iter().map(|kv| kv.key()).collect();
    assert_eq!(
        (d.deleted(), keys),
        (3, vec![&b"/tenant-a/a"[..], b"/tenant-a/b", b"/tenant-a/c"]),
        "a nested delete over the whole prefix"
    );
    for k in ["a", "b", "c", "d"] {
        c.put(format!("/tenant-a/{k}"), k, None).await.unwrap();
    }
    let out = etcdctl(&proxy.endpoint, &["del", "--prefix", "/tenant-a/"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "4",
        "the tenant's keys, counted as etcd would"
    );
    let left = direct
        .get("/tenant-a/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let keys: Vec<&[u8]> = left.kvs().iter().map(|kv| kv.key()).collect();
    assert_eq!(
        keys,
        [b"/tenant-a/\0cutover/x".as_slice()],
        "only cutover's key is left"
    );
    let with_prev = c
        .delete(
            "/tenant-a/",
            Some(etcd_client::DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!((with_prev.deleted(), with_prev.prev_kvs().len()), (0, 0));
}

/// A compare over the tenant's whole prefix answers as etcd does over the tenant's keys
/// alone, whichever side of cutover's keys holds keys (the prefix key itself sorts before
/// them, every other key after): the same Txns, run through cutover and directly on a
/// mirror prefix with the same keys and none of cutover's, take the same branches.
#[tokio::test]
async fn a_compare_over_the_whole_prefix_answers_as_etcd_does_over_the_tenants_keys() {
    use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
    let (etcd, proxy) = with_a_key_of_cutovers().await;
    let mut direct = client(&etcd.endpoint).await;
    let mut tenant = client(&proxy.endpoint).await;
    // The compares, over a whole prefix P; one Txn with two of them as well.
    let compares = |p: &str| -> Vec<Vec<Compare>> {
        let all = |c: Compare| c.with_prefix();
        vec![
            vec![all(Compare::version(p, CompareOp::Greater, 0))],
            vec![all(Compare::version(p, CompareOp::Equal, 0))],
            vec![all(Compare::create_revision(p, CompareOp::Greater, 0))],
            vec![all(Compare::mod_revision(p, CompareOp::Less, 1_000_000))],
            vec![all(Compare::value(p, CompareOp::Equal, "v"))],
            vec![all(Compare::value(p, CompareOp::NotEqual, "v"))],
            vec![
                all(Compare::version(p, CompareOp::Greater, 0)),
                all(Compare::value(p, CompareOp::Equal, "v")),
            ],
        ]
    };
    // The key sets: none; the prefix key alone (before cutover's keys); keys after them
    // only; both.
    let states: [&[&str]; 4] = [&[], &[""], &["a", "b"], &["", "a"]];
    for keys in states {
        for (client, p) in [(&mut tenant, "/tenant-a/"), (&mut direct, "/mirror/")] {
            client
                .delete(p, Some(etcd_client::DeleteOptions::new().with_prefix()))
                .await
                .unwrap();
            for k in keys {
                client.put(format!("{p}{k}"), "v", None).await.unwrap();
            }
        }
        for (through, mirrored) in compares("/tenant-a/").into_iter().zip(compares("/mirror/")) {
            let txn = |cmps: Vec<Compare>, p: &str| {
                Txn::new()
                    .when(cmps)
                    .and_then([TxnOp::get(p, Some(GetOptions::new().with_prefix()))])
                    .or_else([TxnOp::get(format!("{p}a"), None)])
            };
            let shown = format!("{through:?}");
            let got = tenant.txn(txn(through, "/tenant-a/")).await.unwrap();
            let want = direct.txn(txn(mirrored, "/mirror/")).await.unwrap();
            let count = |r: &etcd_client::TxnResponse| match &r.op_responses()[0] {
                etcd_client::TxnOpResponse::Get(g) => (g.count(), g.kvs().len()),
                other => panic!("not a read: {other:?}"),
            };
            assert_eq!(
                (got.succeeded(), count(&got)),
                (want.succeeded(), count(&want)),
                "keys {keys:?}, compares {shown}"
            );
        }
    }
    // A compare on cutover's own keys alone is still refused.
    let refused = tenant
        .txn(Txn::new().when([Compare::version("/tenant-a/\0cutover/", CompareOp::Greater, 0).with_prefix()]))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("etcdserver: permission denied"), "{refused}");
}

/// Sets up etcd auth: root (password "rootpw"), and "tenant" (password "tenantpw") with
/// read-write on `tenant_range` only.
fn enable_auth(etcd: &Etcd, tenant_range: &str) {
    let ep = etcd.endpoint.as_str();
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "tenant"],
        &[
            "role",
            "grant-permission",
            "tenant",
            "readwrite",
            tenant_range,
            "--prefix=true",
        ],
        &["user", "add", "tenant:tenantpw"],
        &["user", "grant-role", "tenant", "tenant"],
        &["auth", "enable"],
    ] {
        let out = etcdctl(ep, args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
}

/// `/readyz` and `/v1/status` of a proxy that cannot serve, once the check has run.
async fn not_ready_because(proxy: &Proxy, reason: &str) {
    let url = format!("{}/readyz", proxy.admin);
    eventually(&format!("/readyz says: {reason}"), Duration::from_secs(10), || async {
        let r = reqwest::get(&url).await.unwrap();
        r.status() == 503 && r.text().await.unwrap().contains(reason)
    })
    .await;
    let st = proxy.status().await;
    assert_eq!(st["ready"], false, "{st}");
    assert!(st["problem"].as_str().unwrap_or_default().contains(reason), "{st}");
}

/// /readyz tells the truth: an endpoint that answers is not enough when every request
/// fails (wrong credentials, a user that may not read the fence key).
#[tokio::test]
async fn readyz_is_not_ready_while_every_request_would_fail() {
    let etcd = Etcd::start().await;
    enable_auth(&etcd, "/tenant-a/registry/");
    let dir = tempfile::tempdir().unwrap();
    let config = |user: &str, password: &str| {
        let file = dir.path().join(format!("{user}-{password}"));
        std::fs::write(&file, password).unwrap();
        format!(
            "prefix: /tenant-a/\ndataStore: default\ndataStores:\n  default:\n    endpoints: [\"{}\"]\n    basicAuth: {{username: {user}, passwordFile: {}}}\n",
            etcd.endpoint,
            file.display()
        )
    };
    let wrong = Proxy::launch(&config("root", "not-the-password"), &[]);
    wrong.wait_alive().await;
    not_ready_because(&wrong, "authentication failed").await;

    // The tenant's user may not read cutover's fence key under the prefix.
    let narrow = Proxy::launch(&config("tenant", "tenantpw"), &[]);
    narrow.wait_alive().await;
    not_ready_because(&narrow, "may not read the tenant's fence key").await;

    // The right credentials: ready.
    let right = Proxy::launch(&config("root", "rootpw"), &[]);
    right.wait_ready().await;
    assert_eq!(right.status().await["ready"], true);
}

/// A tenant through cutover against the same tenant as a prefix-restricted etcd user
/// talking to etcd directly: whatever etcd refuses that user, cutover refuses the tenant
/// (cutover may pass the request to etcd under its own, stronger credentials, so it must
/// not be more lenient), and cutover refuses more where the table in the README says.
#[tokio::test]
async fn a_tenant_through_cutover_is_at_least_as_confined_as_a_prefix_restricted_user() {
    let etcd = Etcd::start().await;
    enable_auth(&etcd, "/tenant-a/");
    let password = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(password.path(), "rootpw").unwrap();
    let proxy = Proxy::start(&format!(
        "prefix: /tenant-a/\ndataStore: default\ndataStores:\n  default:\n    endpoints: [\"{}\"]\n    basicAuth: {{username: root, passwordFile: {}}}\n",
        etcd.endpoint,
        password.path().display()
    ))
    .await;
    let root = ["--user=root:rootpw"];
    let out = etcdctl(&etcd.endpoint, &[&root[..], &["put", "/tenant-b/secret", "b"]].concat());
    assert!(out.status.success(), "{out:?}");
    let dir = tempfile::tempdir().unwrap();
    let snap = |side: &str| dir.path().join(format!("{side}.db")).display().to_string();
    let (snap_direct, snap_proxy) = (snap("direct"), snap("proxy"));
    let steps: Vec<(&str, Vec<String>)> = vec![
        (
            "read another tenant's key",
            vec!["get".into(), "/tenant-b/secret".into()],
        ),
        (
            "write another tenant's key",
            vec!["put".into(), "/tenant-b/x".into(), "v".into()],
        ),
        (
            "delete another tenant's key",
            vec!["del".into(), "/tenant-b/secret".into()],
        ),
        ("read everything", vec!["get".into(), "".into(), "--from-key".into()]),
        ("its own key", vec!["put".into(), "/tenant-a/x".into(), "v".into()]),
        ("read its own key", vec!["get".into(), "/tenant-a/x".into()]),
        ("add a user", vec!["user".into(), "add".into(), "mallory:pw".into()]),
        ("add a role", vec!["role".into(), "add".into(), "r".into()]),
        ("list users", vec!["user".into(), "list".into()]),
        ("switch auth off", vec!["auth".into(), "disable".into()]),
        (
            "add a member",
            vec![
                "member".into(),
                "add".into(),
                "m2".into(),
                "--peer-urls=http://127.0.0.1:1".into(),
                "--learner".into(),
            ],
        ),
        ("remove a member", vec!["member".into(), "remove".into(), "1234".into()]),
        ("defragment", vec!["defrag".into()]),
        ("hash the store", vec!["endpoint".into(), "hashkv".into()]),
        ("move the leader", vec!["move-leader".into(), "1234".into()]),
    ];
    let mut table = String::new();
    let mut looser = Vec::new();
    let mut stricter = Vec::new();
    for (what, args) in &steps {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let direct = etcdctl(&etcd.endpoint, &[&["--user=tenant:tenantpw"][..], &args].concat());
        let through = etcdctl(&proxy.endpoint, &args);
        let ok = |o: &std::process::Output| o.status.success();
        table.push_str(&format!(
            "{what:30} direct {:5} cutover {:5}\n",
            ok(&direct),
            ok(&through)
        ));
        if ok(&through) && !ok(&direct) {
            looser.push(*what);
        }
        if !ok(&through) && ok(&direct) {
            stricter.push(*what);
        }
    }
    // Snapshots: a whole-datastore copy.
    let direct = etcdctl(
        &etcd.endpoint,
        &["--user=tenant:tenantpw", "snapshot", "save", &snap_direct],
    );
    let through = etcdctl(&proxy.endpoint, &["snapshot", "save", &snap_proxy]);
    table.push_str(&format!(
        "{:30} direct {:5} cutover {:5}\n",
        "snapshot",
        direct.status.success(),
        through.status.success()
    ));
    if through.status.success() {
        looser.push("snapshot");
    }
    eprintln!("{table}");
    assert!(
        looser.is_empty(),
        "cutover let the tenant do what etcd refuses its user: {looser:?}\n{table}"
    );
    let _ = stricter;
    // Stricter than etcd: a restricted user lists every tenant's leases (etcd 3.4 does
    // not check) and compacts the shared history; through cutover it does neither.
    let out = etcdctl(&etcd.endpoint, &["--user=root:rootpw", "lease", "grant", "600"]);
    let b_lease = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .expect("lease grant prints the ID")
        .to_string();
    let attach = format!("--lease={b_lease}");
    let out = etcdctl(
        &etcd.endpoint,
        &["--user=root:rootpw", "put", "/tenant-b/pod", "b", &attach],
    );
    assert!(out.status.success(), "{out:?}");
    let through = etcdctl(&proxy.endpoint, &["lease", "list"]);
    assert!(through.status.success(), "{through:?}");
    assert!(
        !String::from_utf8_lossy(&through.stdout).contains(&b_lease),
        "{through:?}"
    );
    let direct = etcdctl(&etcd.endpoint, &["--user=tenant:tenantpw", "lease", "list"]);
    eprintln!(
        "lease list as the restricted user: {}",
        String::from_utf8_lossy(&direct.stdout).trim()
    );
    let rev = |o: &std::process::Output| -> i64 {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["header"]["revision"].as_i64().unwrap()
    };
    let now = rev(&etcdctl(&proxy.endpoint, &["get", "/tenant-a/x", "-w", "json"]));
    let out = etcdctl(&proxy.endpoint, &["compaction", &now.to_string()]);
    assert!(out.status.success(), "{out:?}");
    let old = etcdctl(
        &etcd.endpoint,
        &["--user=root:rootpw", "get", "/tenant-b/secret", "--rev=2"],
    );
    assert!(old.status.success(), "the tenant's compaction went through: {old:?}");
}
