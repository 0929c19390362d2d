//! One tenant cannot read, break or destroy another's: configurations that would let
//! cutover delete data it does not own are refused, and so is every cluster-wide RPC of a
//! tenant (a proxy with a `prefix`) that is not the operator.

use std::time::Duration;

use serde_json::json;

use crate::migrate::{wait_end, TENANT};
use crate::support::{client, eventually, Etcd, Proxy};

/// Keys the tenant wrote through the proxy, as the proxy lists them.
async fn tenant_keys(proxy: &Proxy) -> usize {
    let mut c = client(&proxy.endpoint).await;
    c.get(TENANT, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .expect("list through the proxy")
        .kvs()
        .len()
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
