//! The admin API (/healthz, /readyz, /metrics, /v1/status), logs, and the command line's
//! handling of bad configuration.

use std::process::Command;

use crate::support::{client, etcdctl_ok, Etcd, Proxy};

#[tokio::test]
async fn admin_endpoints_report_health_status_and_metrics() {
    let etcd = Etcd::start().await;
    let proxy = Proxy::start_for(&[&etcd]).await;
    let healthz = reqwest::get(format!("{}/healthz", proxy.admin)).await.unwrap();
    assert_eq!(healthz.status(), 200);

    let mut c = client(&proxy.endpoint).await;
    c.put("k", "v", None).await.unwrap();
    c.get("k", None).await.unwrap();
    let _ = c
        .get("k", Some(etcd_client::GetOptions::new().with_revision(999)))
        .await;
    let (_watcher, _stream) = c.watch("k", None).await.unwrap();

    let status: serde_json::Value = reqwest::get(format!("{}/v1/status", proxy.admin))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["dataStore"], "default");
    assert_eq!(status["phase"], "Ready");
    assert_eq!(status["ready"], true);
    assert_eq!(
        status["dataStores"][0]["endpoints"][0]["url"],
        format!("http://{}", etcd.endpoint)
    );
    assert_eq!(status["dataStores"][0]["endpoints"][0]["healthy"], true);

    let m = proxy.metrics().await;
    for line in [
        "cutover_grpc_requests_total{service=\"KV\",method=\"Put\",code=\"OK\"} 1",
        "cutover_grpc_requests_total{service=\"KV\",method=\"Range\",code=\"OK\"} 1",
        "cutover_grpc_requests_total{service=\"KV\",method=\"Range\",code=\"OutOfRange\"} 1",
        "cutover_open_watches 1",
        "cutover_open_streams{kind=\"watch\"} 1",
        &format!(
            "cutover_upstream_endpoint_up{{datastore=\"default\",endpoint=\"http://{}\"}} 1",
            etcd.endpoint
        ),
    ] {
        assert!(m.lines().any(|l| l == line), "missing {line:?} in:\n{m}");
    }
    assert!(
        m.contains("cutover_grpc_request_duration_seconds_bucket{le=\"0.0032\",service=\"KV\",method=\"Put\"}"),
        "{m}"
    );
}

#[tokio::test]
async fn readyz_follows_the_datastore() {
    let mut etcd = Etcd::start().await;
    let proxy = Proxy::start_for(&[&etcd]).await;
    etcd.kill();
    crate::support::eventually("readyz turns 503", std::time::Duration::from_secs(15), || async {
        reqwest::get(format!("{}/readyz", proxy.admin))
            .await
            .map(|r| r.status() == 503)
            .unwrap_or(false)
    })
    .await;
    let body = reqwest::get(format!("{}/readyz", proxy.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.contains("datastore \"default\" has no endpoint that answers"),
        "{body}"
    );
}

#[tokio::test]
async fn json_logs_are_json_lines() {
    let etcd = Etcd::start().await;
    let proxy = Proxy::launch(
        &format!(
            "dataStore: default\ndataStores:\n  default:\n    endpoints: [\"{}\"]\n",
            etcd.endpoint
        ),
        &["--log-format", "json"],
    );
    proxy.wait_ready().await;
    etcdctl_ok(&proxy.endpoint, &["put", "a", "b"]);
    let log = proxy.log();
    let first = log.lines().next().expect("a log line");
    let v: serde_json::Value = serde_json::from_str(first).unwrap_or_else(|e| panic!("not JSON ({e}): {first}"));
    assert_eq!(v["fields"]["message"], "cutover is serving");
}

fn cutover(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .output()
        .expect("cutover runs")
}

#[test]
fn bad_config_is_refused_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("dataStore: nope\ndataStores:\n  default:\n    endpoints: [127.0.0.1:2379]\n", "config: dataStore: \"nope\" is not one of dataStores (default)"),
        ("dataStore: default\ndataStores:\n  default:\n    endpoints: [127.0.0.1:2379]\n    tlss: {}\n", "config: dataStores.default.tlss: unknown field `tlss`"),
        ("listen: 999.1.1.1:1\ndataStore: default\ndataStores:\n  default:\n    endpoints: [127.0.0.1:2379]\n", "config: listen:"),
        ("dataStore: default\ndataStores:\n  default:\n    endpoints: [127.0.0.1:2379]\n    tls: {caFile: /nonexistent/ca.pem}\n", "config: dataStores.default.tls.caFile: cannot read /nonexistent/ca.pem"),
        ("dataStore: default\ndataStores:\n  default:\n    endpoints: []\n", "config: dataStores.default.endpoints: at least one endpoint is needed"),
        ("dataStore: [oops\n", "not valid YAML"),
    ];
    for (i, (yaml, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let out = cutover(&["serve", "--config", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "case {i}: {stderr}");
        assert!(
            stderr.contains(expected),
            "case {i}: expected {expected:?} in {stderr:?}"
        );
    }
    let out = cutover(&["serve", "--config", "/nonexistent/cutover.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file /nonexistent/cutover.yaml"));
}

#[test]
fn flags_and_environment_override_the_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args([
            "check-config",
            "--data-store",
            "b",
            "--data-store-endpoints",
            "b=127.0.0.1:1,127.0.0.1:2",
        ])
        .env("CUTOVER_LISTEN", "unix:///tmp/x.sock")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("listen: unix:///tmp/x.sock"), "{stdout}");
    assert!(
        stdout.contains("dataStores.b: http://127.0.0.1:1, http://127.0.0.1:2"),
        "{stdout}"
    );
}

#[test]
fn help_explains_every_flag() {
    let out = cutover(&["serve", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--listen",
        "--tls-client-ca-file",
        "--admin-token-file",
        "--data-store-endpoints",
        "--max-request-bytes",
        "CUTOVER_LISTEN",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}

#[tokio::test]
async fn an_unreachable_admin_address_is_a_clear_start_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut proxy = Proxy::launch(
        &format!("admin:\n  listen: {addr}\ndataStore: d\ndataStores:\n  d:\n    endpoints: [127.0.0.1:1]\n"),
        &[],
    );
    crate::support::eventually("cutover exits", std::time::Duration::from_secs(10), || {
        let exited = proxy.try_exit().is_some();
        async move { exited }
    })
    .await;
    assert!(
        proxy.log().contains(&format!("admin API: cannot listen on {addr}")),
        "{}",
        proxy.log()
    );
}

#[test]
fn the_deploy_example_is_a_valid_config_and_command_line() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/sidecar.yaml")).unwrap();
    let docs: Vec<serde_norway::Value> = serde_norway::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
        .collect();
    let config = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .and_then(|d| d["data"]["cutover.yaml"].as_str())
        .expect("a ConfigMap with cutover.yaml");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.yaml");
    std::fs::write(&path, config).unwrap();
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").expect("a Deployment");
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .unwrap();
    let sidecar = containers
        .iter()
        .find(|c| c["name"] == "cutover")
        .expect("the cutover container");
    let mut args: Vec<String> = sidecar["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    // The container's own command line, with `serve` swapped for `check-config` and the
    // mounted file for our copy of it.
    assert_eq!(args[0], "serve");
    args[0] = "check-config".into();
    let at = args.iter().position(|a| a == "--config").unwrap() + 1;
    args[at] = path.to_str().unwrap().into();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cutover(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("dataStore: default"), "{stdout}");
    // The probes use the admin API's paths.
    for probe in ["readinessProbe", "livenessProbe"] {
        let p = sidecar[probe]["httpGet"]["path"].as_str().unwrap();
        assert!(["/readyz", "/healthz"].contains(&p), "{probe}: {p}");
    }
}
