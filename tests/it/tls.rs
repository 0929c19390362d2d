//! TLS on both sides of the proxy: clients to cutover (with client-certificate checks), and
//! cutover to an etcd that demands client certificates; plus the unix-socket listener.

use std::path::Path;
use std::time::{Duration, Instant};

use cutover::error::messages::{NO_CONNECTION, REQUEST_TIMED_OUT};
use cutover::proto::etcdserverpb::kv_client::KvClient;
use cutover::proto::etcdserverpb::{PutRequest, RangeRequest};
use etcd_client::{Certificate, ConnectOptions, EventType, Identity, TlsOptions};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

use crate::support::{client, etcdctl, eventually, Etcd, EtcdOptions, Proxy, TlsFiles};

/// Longest any single refused or failing call may take before we call it a hang.
const PROMPT: Duration = Duration::from_secs(8);

/// How cutover's log (rustls) names the TLS alert of an etcd that wants a client
/// certificate and got none.
const CERTIFICATE_REFUSALS: [&str; 2] = [
    "received fatal alert: BadCertificate",
    "received fatal alert: CertificateRequired",
];

fn pem(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read pem")
}

/// A raw gRPC channel to `https://addr` that trusts the test CA and presents the client
/// certificate only when `with_cert`. Returns the error text if the channel cannot be made.
async fn tls_channel(addr: &str, tls: &TlsFiles, with_cert: bool) -> Result<Channel, String> {
    let mut cfg = ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(pem(&tls.ca)));
    if with_cert {
        cfg = cfg.identity(tonic::transport::Identity::from_pem(
            pem(&tls.client_cert),
            pem(&tls.client_key),
        ));
    }
    let ep = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(cfg)
        .unwrap()
        .connect_timeout(Duration::from_secs(3));
    match tokio::time::timeout(PROMPT, ep.connect()).await {
        Ok(Ok(ch)) => Ok(ch),
        Ok(Err(e)) => Err(format!("{e:?}")),
        Err(_) => panic!("connecting to {addr} hung for {PROMPT:?}"),
    }
}

/// One Range for `key` on `channel`, bounded by [`PROMPT`].
async fn raw_get(channel: Channel, key: &str) -> Result<Vec<u8>, tonic::Status> {
    let mut kv = KvClient::new(channel);
    let call = kv.range(RangeRequest {
        key: key.as_bytes().to_vec().into(),
        ..Default::default()
    });
    let resp = tokio::time::timeout(PROMPT, call)
        .await
        .expect("a Range through the proxy hung")?;
    Ok(resp
        .into_inner()
        .kvs
        .first()
        .map(|kv| kv.value.to_vec())
        .unwrap_or_default())
}

async fn raw_put(channel: Channel, key: &str, value: &str) -> Result<(), tonic::Status> {
    let mut kv = KvClient::new(channel);
    let call = kv.put(PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        ..Default::default()
    });
    tokio::time::timeout(PROMPT, call)
        .await
        .expect("a Put through the proxy hung")?;
    Ok(())
}

/// etcd-client over TLS with the CA and the client certificate.
async fn tls_client(addr: &str, tls: &TlsFiles) -> etcd_client::Client {
    let opts = ConnectOptions::new().with_tls(
        TlsOptions::new()
            .ca_certificate(Certificate::from_pem(pem(&tls.ca)))
            .identity(Identity::from_pem(pem(&tls.client_cert), pem(&tls.client_key))),
    );
    etcd_client::Client::connect([format!("https://{addr}")], Some(opts))
        .await
        .expect("etcd-client connects over TLS")
}

fn tls_args(tls: &TlsFiles, with_cert: bool) -> Vec<String> {
    let mut a = vec![format!("--cacert={}", tls.ca.display())];
    if with_cert {
        a.push(format!("--cert={}", tls.client_cert.display()));
        a.push(format!("--key={}", tls.client_key.display()));
    }
    a
}

/// Runs etcdctl (3.4, grpc-go: the same stack as kube-apiserver) with a short timeout.
fn etcdctl_with(endpoint: &str, extra: &[String], args: &[&str]) -> std::process::Output {
    let mut all: Vec<&str> = extra.iter().map(String::as_str).collect();
    all.push("--command-timeout=3s");
    all.extend_from_slice(args);
    etcdctl(endpoint, &all)
}

/// Starts the binary and waits only until its admin API answers at all (200 or 503): a
/// proxy whose datastore refuses it is expected never to become ready.
async fn launch_until_admin_answers(body: &str) -> Proxy {
    let proxy = Proxy::launch(body, &[]);
    let url = format!("{}/healthz", proxy.admin);
    eventually("the admin API answers", Duration::from_secs(20), || {
        let url = url.clone();
        async move { reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()) }
    })
    .await;
    proxy
}

async fn readyz_status(proxy: &Proxy) -> u16 {
    reqwest::get(format!("{}/readyz", proxy.admin))
        .await
        .expect("readyz answers")
        .status()
        .as_u16()
}

#[tokio::test]
async fn proxy_serves_tls_and_requires_client_certificates() {
    let tls = TlsFiles::generate();
    let etcd = Etcd::start().await;
    let mut proxy = Proxy::start(&format!(
        "tls:\n  certFile: {}\n  keyFile: {}\n  clientCAFile: {}\ndataStore: default\ndataStores:\n  default:\n    endpoints: [\"{}\"]\n",
        tls.server_cert.display(),
        tls.server_key.display(),
        tls.ca.display(),
        etcd.endpoint
    ))
    .await;
    let https = format!("https://{}", proxy.endpoint);

    // A client with the CA and a client certificate: etcd-client (rustls) ...
    let mut good = tls_client(&proxy.endpoint, &tls).await;
    good.put("tls/a", "1", None).await.expect("put over mTLS");
    let r = good.get("tls/a", None).await.expect("get over mTLS");
    assert_eq!(r.kvs()[0].value(), b"1");
    // ... and etcdctl (grpc-go, what kube-apiserver uses).
    let out = etcdctl_with(&https, &tls_args(&tls, true), &["put", "tls/b", "2"]);
    assert!(
        out.status.success(),
        "etcdctl put over mTLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = etcdctl_with(&https, &tls_args(&tls, true), &["get", "tls/b", "--print-value-only"]);
    assert!(
        out.status.success(),
        "etcdctl get over mTLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");

    // Without a client certificate the handshake is refused: no request gets through.
    // With TLS 1.3 the client's side of the handshake completes first, so the refusal
    // shows at connect or at the first call, and as "connection closed" or as the alert.
    if let Ok(ch) = tls_channel(&proxy.endpoint, &tls, false).await {
        raw_put(ch, "tls/nocert", "x")
            .await
            .expect_err("a client without a certificate could write");
    }
    let out = etcdctl_with(&https, &tls_args(&tls, false), &["put", "tls/nocert", "x"]);
    assert!(!out.status.success(), "etcdctl without a client certificate succeeded");

    // A plaintext client on the TLS port gets nothing either.
    let plain = match Endpoint::from_shared(format!("http://{}", proxy.endpoint))
        .unwrap()
        .connect()
        .await
    {
        Err(e) => Err(format!("{e:?}")),
        Ok(ch) => raw_put(ch, "tls/plain", "x").await.map_err(|s| format!("{s:?}")),
    };
    assert!(plain.is_err(), "a plaintext client could write to the TLS port");
    let out = etcdctl_with(&format!("http://{}", proxy.endpoint), &[], &["put", "tls/plain", "x"]);
    assert!(
        !out.status.success(),
        "plaintext etcdctl succeeded against the TLS port"
    );

    // None of the refused writes reached etcd (read directly from it).
    let mut direct = client(&etcd.endpoint).await;
    for k in ["tls/nocert", "tls/plain"] {
        assert_eq!(direct.get(k, None).await.unwrap().count(), 0, "{k} was written");
    }

    // The proxy is still up and still serves the good clients, on new connections too.
    assert!(proxy.try_exit().is_none(), "the proxy exited");
    good.put("tls/a", "3", None).await.expect("put after refusals");
    assert_eq!(good.get("tls/a", None).await.unwrap().kvs()[0].value(), b"3");
    let ch = tls_channel(&proxy.endpoint, &tls, true)
        .await
        .expect("a new mTLS connection");
    assert_eq!(raw_get(ch, "tls/b").await.expect("raw get over mTLS"), b"2");
}

#[tokio::test]
async fn proxy_reaches_an_etcd_that_requires_client_certificates() {
    let tls = TlsFiles::generate();
    let etcd = Etcd::start_with(EtcdOptions {
        tls: Some((tls.server_cert.clone(), tls.server_key.clone(), tls.ca.clone())),
        client_auth: true,
    })
    .await;
    let datastore = |with_cert: bool| {
        let mut body = format!(
            "dataStore: default\ndataStores:\n  default:\n    endpoints: [\"{}\"]\n    tls:\n      caFile: {}\n",
            etcd.endpoint,
            tls.ca.display()
        );
        if with_cert {
            body.push_str(&format!(
                "      certFile: {}\n      keyFile: {}\n",
                tls.client_cert.display(),
                tls.client_key.display()
            ));
        }
        body
    };

    // The proxy with the client certificate: a plaintext client works through it.
    let proxy = Proxy::start(&datastore(true)).await;
    let mut c = client(&proxy.endpoint).await;
    let (_watcher, mut events) = c
        .watch("mtls/", Some(etcd_client::WatchOptions::new().with_prefix()))
        .await
        .expect("watch through the proxy");
    c.put("mtls/a", "1", None).await.expect("put through the proxy");
    let r = c.get("mtls/a", None).await.expect("get through the proxy");
    assert_eq!(r.kvs()[0].value(), b"1");
    let resp = tokio::time::timeout(PROMPT, events.message())
        .await
        .expect("the watch event did not arrive")
        .expect("watch stream error")
        .expect("watch stream ended");
    let ev = &resp.events()[0];
    assert_eq!(ev.event_type(), EventType::Put);
    assert_eq!(ev.kv().unwrap().key(), b"mtls/a");
    assert_eq!(ev.kv().unwrap().value(), b"1");

    // A proxy configured without the client certificate: etcd refuses its handshakes. A
    // request must fail promptly with Unavailable (the code clients treat as "try again"),
    // never hang, and the proxy must stay up and say why.
    let mut bad = launch_until_admin_answers(&datastore(false)).await;
    let ch = Endpoint::from_shared(format!("http://{}", bad.endpoint))
        .unwrap()
        .connect()
        .await
        .expect("plaintext connect to the proxy");
    for _ in 0..3 {
        let started = Instant::now();
        let err = raw_get(ch.clone(), "mtls/a")
            .await
            .expect_err("a Range succeeded without a client certificate");
        // A read is resent until no endpoint is left, and then reported as never sent.
        assert_eq!(
            (err.code(), err.message()),
            (Code::Unavailable, NO_CONNECTION),
            "Range: {err:?}"
        );
        assert!(started.elapsed() < PROMPT, "Range took {:?}", started.elapsed());

        let started = Instant::now();
        let err = raw_put(ch.clone(), "mtls/b", "x")
            .await
            .expect_err("a Put succeeded without a client certificate");
        // Usually the refusal is recognised as "never sent" too. Sometimes the proxy's
        // request bytes hit the already closed socket first and all it learns is "broken
        // pipe", which for a write means the outcome is unknown: etcd's "request timed
        // out", still Unavailable.
        assert_eq!(err.code(), Code::Unavailable, "Put: {err:?}");
        assert!(
            [NO_CONNECTION, REQUEST_TIMED_OUT].contains(&err.message()),
            "Put: {err:?}"
        );
        assert!(started.elapsed() < PROMPT, "Put took {:?}", started.elapsed());
    }
    assert!(bad.try_exit().is_none(), "the proxy exited");
    eventually(
        "readyz reports the datastore unreachable",
        Duration::from_secs(10),
        || async { readyz_status(&bad).await == 503 },
    )
    .await;
    // The log names the cause. Not every failed connection shows etcd's alert (hyper may
    // only see the connection close), so keep asking until one does. Which alert depends
    // on the Go that built etcd: bad_certificate from 3.4.23 (Go 1.19), the TLS 1.3
    // certificate_required from 3.5.16 (a newer Go).
    eventually(
        "the proxy log names etcd's certificate refusal",
        Duration::from_secs(15),
        || {
            let ch = ch.clone();
            let bad = &bad;
            async move {
                let _ = raw_get(ch, "mtls/a").await;
                let log = bad.log();
                CERTIFICATE_REFUSALS.iter().any(|alert| log.contains(alert))
            }
        },
    )
    .await;
    assert!(bad.try_exit().is_none(), "the proxy exited");
    // Nothing was written by the refused Put.
    let r = c.get("mtls/b", None).await.unwrap();
    assert_eq!(r.count(), 0);
    // The good proxy was not affected.
    assert_eq!(readyz_status(&proxy).await, 200);
}

/// A raw gRPC channel over the unix socket at `path`.
async fn uds_channel(path: &Path) -> Channel {
    crate::common::connect_channel(&format!("unix:{}", path.display()))
        .await
        .expect("connect to the unix socket")
}

#[tokio::test]
async fn proxy_listens_on_a_unix_socket() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // A socket named like host:port, dialled relative to the working directory, as etcd's
    // own tests do (absolute paths are covered by the test below).
    let name = "localhost:2379";
    let sock = dir.path().join(name);
    let proxy = Proxy::start(&format!(
        "listen: unix://{}\ndataStore: default\ndataStores:\n  default:\n    endpoints: [\"{}\"]\n",
        sock.display(),
        etcd.endpoint
    ))
    .await;
    assert!(sock.exists(), "the proxy did not create {}", sock.display());

    let run = |args: &[&str]| {
        std::process::Command::new("etcdctl")
            .current_dir(dir.path())
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=unix://{name}"))
            .arg("--command-timeout=5s")
            .args(args)
            .output()
            .expect("etcdctl runs")
    };
    let out = run(&["put", "sock/a", "1"]);
    assert!(
        out.status.success(),
        "etcdctl put over the socket: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["get", "sock/a", "--print-value-only"]);
    assert!(
        out.status.success(),
        "etcdctl get over the socket: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

    // A tonic client on the absolute path.
    let ch = uds_channel(&sock).await;
    raw_put(ch.clone(), "sock/b", "2").await.expect("put over the socket");
    assert_eq!(raw_get(ch, "sock/a").await.expect("get over the socket"), b"1");

    // The writes really went to etcd.
    let mut direct = client(&etcd.endpoint).await;
    assert_eq!(direct.get("sock/a", None).await.unwrap().kvs()[0].value(), b"1");
    assert_eq!(direct.get("sock/b", None).await.unwrap().kvs()[0].value(), b"2");
    drop(proxy);
}

/// Ends a background etcdctl when the test does, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn etcdctl_reaches_a_unix_socket_by_its_absolute_path() {
    // etcdctl 3.4 dialling unix:///abs/path sends "/abs/path" as the HTTP/2 :authority.
    // h2 on its own resets such streams (PROTOCOL_ERROR); etcd accepts them, and so must
    // the proxy (it replaces the value on unix connections, see src/server/uds.rs).
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("etcd.sock");
    assert!(sock.is_absolute());
    let _proxy = Proxy::start(&format!(
        "listen: unix://{}\ndataStore: default\ndataStores:\n  default:\n    endpoints: [\"{}\"]\n",
        sock.display(),
        etcd.endpoint
    ))
    .await;
    let endpoint = format!("unix://{}", sock.display());

    let out = etcdctl_with(&endpoint, &[], &["put", "abs/a", "1"]);
    assert!(
        out.status.success(),
        "etcdctl put over {endpoint}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = etcdctl_with(&endpoint, &[], &["get", "abs/a", "--print-value-only"]);
    assert!(
        out.status.success(),
        "etcdctl get over {endpoint}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

    // A watch over the socket (a long-lived stream, as kube-apiserver keeps) sees the
    // history and a later write.
    let watch = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(["watch", "--prefix", "--rev=1", "abs/"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("etcdctl watch runs");
    let mut watch = KillOnDrop(watch);
    let stdout = watch.0.stdout.take().expect("watch stdout");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |want: &[&str]| {
        let deadline = Instant::now() + PROMPT;
        while !seen.windows(want.len()).any(|w: &[String]| w == want) {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => seen.push(line),
                Err(_) => panic!("etcdctl watch over {endpoint} did not print {want:?}; got {seen:?}"),
            }
        }
    };
    wait_for(&["PUT", "abs/a", "1"]);
    let out = etcdctl_with(&endpoint, &[], &["put", "abs/b", "2"]);
    assert!(
        out.status.success(),
        "etcdctl put over {endpoint}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(&["PUT", "abs/b", "2"]);
    drop(watch);

    // The writes really went to etcd.
    let mut direct = client(&etcd.endpoint).await;
    assert_eq!(direct.get("abs/a", None).await.unwrap().kvs()[0].value(), b"1");
    assert_eq!(direct.get("abs/b", None).await.unwrap().kvs()[0].value(), b"2");
}
