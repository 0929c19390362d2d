//! Gateway mode (being built) against etcd itself: Kamaji's controller sets up two tenants
//! with etcdctl as root, each tenant's client (certificate CN = its user) works on its
//! prefix, and then Kamaji deletes one tenant. Every command gets the same answer through
//! the gateway as from an etcd with client-certificate auth, and the tenants' keys land on
//! the pool's placement datastore.

use std::path::Path;

use crate::support::{etcdctl, Etcd, EtcdOptions, Proxy, TlsFiles};

/// etcdctl as the holder of `cert`: what it printed and whether it succeeded.
fn run(endpoint: &str, tls: &TlsFiles, cert: &Path, key: &Path, args: &[&str]) -> String {
    let mut all = vec![
        format!("--cacert={}", tls.ca.display()),
        format!("--cert={}", cert.display()),
        format!("--key={}", key.display()),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let out = etcdctl(endpoint, &all);
    // etcdctl's own log lines name its client and the time: not part of the answer.
    let stderr: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with("{\"level\""))
        .map(String::from)
        .collect();
    format!(
        "{} | {} {}",
        if out.status.success() { "ok" } else { "failed" },
        String::from_utf8_lossy(&out.stdout).trim(),
        stderr.join("\n").trim()
    )
}

#[tokio::test]
async fn kamajis_calls_through_the_gateway_answer_as_etcd_and_each_tenant_keeps_to_its_prefix() {
    let tls = TlsFiles::generate();
    let direct = Etcd::start_with(EtcdOptions {
        tls: Some((tls.server_cert.clone(), tls.server_key.clone(), tls.ca.clone())),
        client_auth: true,
    })
    .await;
    let east = Etcd::start().await;
    let west = Etcd::start().await;
    let gateway = Proxy::start(&format!(
        "mode: gateway\ntls:\n  certFile: {}\n  keyFile: {}\n  clientCAFile: {}\n\
         dataStore: east\ndataStores:\n  east:\n    endpoints: [\"{}\"]\n  west:\n    endpoints: [\"{}\"]\n",
        tls.server_cert.display(),
        tls.server_key.display(),
        tls.ca.display(),
        east.endpoint,
        west.endpoint
    ))
    .await;

    let root = (&tls.client_cert, &tls.client_key);
    let a = (&tls.tenant_cert, &tls.tenant_key);
    let b = (&tls.tenant_b_cert, &tls.tenant_b_key);
    let mut steps: Vec<(&str, (&std::path::PathBuf, &std::path::PathBuf), Vec<&str>)> = vec![
        ("root", root, vec!["user", "add", "root", "--no-password"]),
        ("root", root, vec!["user", "grant-role", "root", "root"]),
        ("root", root, vec!["auth", "enable"]),
    ];
    for (user, schema) in [("tenant-a", "a"), ("tenant-b", "b")] {
        let prefix: &'static str = Box::leak(format!("/{schema}/").into_boxed_str());
        steps.extend([
            ("root", root, vec!["user", "get", user]),
            ("root", root, vec!["user", "add", user, "--no-password"]),
            ("root", root, vec!["role", "get", schema]),
            ("root", root, vec!["role", "add", schema]),
            (
                "root",
                root,
                vec!["role", "grant-permission", schema, "readwrite", prefix, "--prefix"],
            ),
            ("root", root, vec!["user", "grant-role", user, schema]),
            ("root", root, vec!["user", "get", user]),
            ("root", root, vec!["role", "get", schema]),
        ]);
    }
    steps.extend([
        ("root", root, vec!["user", "list"]),
        ("root", root, vec!["role", "list"]),
        ("root", root, vec!["role", "add", "a"]),
        ("root", root, vec!["user", "add", "tenant-a", "--no-password"]),
        ("tenant-a", a, vec!["put", "/a/pods/x", "1"]),
        ("tenant-a", a, vec!["get", "/a/pods/x"]),
        ("tenant-a", a, vec!["get", "/a/", "--prefix", "--keys-only"]),
        ("tenant-a", a, vec!["put", "/b/pods/x", "stolen"]),
        ("tenant-a", a, vec!["get", "/b/", "--prefix"]),
        ("tenant-a", a, vec!["get", "", "--prefix"]),
        ("tenant-a", a, vec!["user", "list"]),
        ("tenant-a", a, vec!["user", "get", "tenant-a"]),
        ("tenant-b", b, vec!["put", "/b/pods/x", "2"]),
        ("tenant-b", b, vec!["get", "/b/pods/x"]),
        ("tenant-b", b, vec!["del", "/a/pods/x"]),
        ("tenant-b", b, vec!["txn"]),
        // Kamaji's deletion of tenant a: its role, its keys, its user.
        ("root", root, vec!["role", "delete", "a"]),
        ("root", root, vec!["del", "/a/", "--prefix"]),
        ("root", root, vec!["user", "delete", "tenant-a"]),
        ("tenant-a", a, vec!["get", "/a/pods/x"]),
        ("tenant-b", b, vec!["get", "/b/pods/x"]),
    ]);
    let mut differing = Vec::new();
    let mut answers = Vec::new();
    for (who, (cert, key), args) in &steps {
        let d = run(&direct.endpoint, &tls, cert, key, args);
        let g = run(&gateway.endpoint, &tls, cert, key, args);
        if d != g {
            differing.push(format!("  {who} {args:?}:\n    etcd:    {d}\n    gateway: {g}"));
        }
        answers.push(d);
    }
    assert!(
        differing.is_empty(),
        "the gateway answered otherwise than etcd:\n{}\ngateway log:\n{}",
        differing.join("\n"),
        gateway.log().lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    assert!(answers.iter().any(|a| a.contains("permission denied")), "{answers:?}");
    assert!(
        answers.iter().any(|a| a.starts_with("ok") && a.contains("/b/pods/x")),
        "{answers:?}"
    );
    // Tenant b's key is on the placement datastore, under its prefix; west holds nothing.
    let on = |etcd: &Etcd| {
        let out = etcdctl(&etcd.endpoint, &["get", "/", "--prefix", "--keys-only"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(on(&east), "/b/pods/x");
    assert_eq!(on(&west), "");
}
