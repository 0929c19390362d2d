//! Errors are byte-identical through the proxy: each scenario runs against one etcd
//! directly and against another (with the same history) through cutover, and the gRPC code
//! and message must match exactly, along with the text we know etcd uses.

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Permission, PutOptions, Txn, TxnOp};
use tonic::Code;

use crate::support::{client, Etcd, Proxy};

/// Code and message of an etcd-client error that carries a gRPC status.
fn status_of(e: etcd_client::Error) -> (Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

/// Two stores with the same history: one reached directly, one through the proxy.
struct Pair {
    _direct_etcd: Etcd,
    _proxied_etcd: Etcd,
    proxy: Proxy,
    direct: String,
}

impl Pair {
    async fn start() -> Pair {
        let a = Etcd::start().await;
        let b = Etcd::start().await;
        let proxy = Proxy::start_for(&[&b]).await;
        Pair {
            direct: a.endpoint.clone(),
            _direct_etcd: a,
            _proxied_etcd: b,
            proxy,
        }
    }

    async fn clients(&self) -> [Client; 2] {
        [client(&self.direct).await, client(&self.proxy.endpoint).await]
    }
}

/// Runs `scenario` on both sides and checks the error is the same, and is `expected`.
macro_rules! same_error {
    ($clients:expr, $expected_code:expr, $expected_msg:expr, |$c:ident| $body:expr) => {{
        let mut seen = Vec::new();
        for $c in $clients.iter_mut() {
            let result = $body;
            let err = result.err().expect("the request must fail");
            seen.push(status_of(err));
        }
        assert_eq!(seen[0], seen[1], "direct vs through cutover");
        assert_eq!(seen[1].0, $expected_code, "code: {:?}", seen[1]);
        assert_eq!(seen[1].1, $expected_msg);
    }};
}

#[tokio::test]
async fn kv_errors_match_etcd() {
    let pair = Pair::start().await;
    let mut cs = pair.clients().await;
    for c in cs.iter_mut() {
        for i in 0..5 {
            c.put("k", format!("v{i}"), None).await.unwrap();
        }
        c.compact(4, None).await.unwrap();
    }

    same_error!(
        cs,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
        |c| c.get("k", Some(GetOptions::new().with_revision(2))).await
    );
    same_error!(
        cs,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
        |c| c.get("k", Some(GetOptions::new().with_revision(1000))).await
    );
    same_error!(
        cs,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
        |c| c.compact(3, None).await
    );

    let many: Vec<TxnOp> = (0..129).map(|i| TxnOp::put(format!("m{i}"), "x", None)).collect();
    same_error!(
        cs,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
        |c| c.txn(Txn::new().and_then(many.clone())).await
    );

    let dup = vec![TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)];
    same_error!(
        cs,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
        |c| c
            .txn(
                Txn::new()
                    .when([Compare::version("d", CompareOp::Equal, 0)])
                    .and_then(dup.clone())
            )
            .await
    );

    // Between etcd's request limit (1.5 MiB) and its gRPC limit (2 MiB): refused by etcd.
    let big = vec![b'x'; 1_600_000];
    same_error!(cs, Code::InvalidArgument, "etcdserver: request is too large", |c| c
        .put("big", big.clone(), None)
        .await);

    // Over the gRPC limit: refused before etcd (or the proxy) decodes it, in grpc-go's words.
    let huge = vec![b'x'; 3 * 1024 * 1024];
    let expected = format!(
        "grpc: received message larger than max ({} vs. {})",
        huge.len() + 11,
        2 * 1024 * 1024
    );
    same_error!(cs, Code::ResourceExhausted, expected, |c| c
        .put("huge", huge.clone(), None)
        .await);

    same_error!(cs, Code::InvalidArgument, "etcdserver: key is not provided", |c| c
        .put("", "v", None)
        .await);

    same_error!(cs, Code::NotFound, "etcdserver: requested lease not found", |c| c
        .put("leased", "v", Some(PutOptions::new().with_lease(0x1234)))
        .await);
}

#[tokio::test]
async fn lease_errors_match_etcd() {
    let pair = Pair::start().await;
    let mut cs = pair.clients().await;
    same_error!(cs, Code::NotFound, "etcdserver: requested lease not found", |c| c
        .lease_revoke(0x4242)
        .await);
    // Keep-alive of an unknown lease: etcd answers TTL 0 on the stream, which etcd-client
    // turns into "lease not found"; both sides must look the same.
    let mut seen = Vec::new();
    for c in cs.iter_mut() {
        seen.push(format!("{:?}", c.lease_keep_alive(0x4242).await.map(|_| ())));
    }
    assert_eq!(seen[0], seen[1], "direct vs through cutover");
    assert!(seen[1].contains("lease not found"), "{}", seen[1]);
    // Granting an ID that exists.
    for c in cs.iter_mut() {
        c.lease_grant(60, Some(etcd_client::LeaseGrantOptions::new().with_id(77)))
            .await
            .unwrap();
    }
    same_error!(cs, Code::FailedPrecondition, "etcdserver: lease already exists", |c| c
        .lease_grant(60, Some(etcd_client::LeaseGrantOptions::new().with_id(77)))
        .await);
}

#[tokio::test]
async fn permission_denied_with_auth_on_matches_etcd() {
    let pair = Pair::start().await;
    let mut admins = pair.clients().await;
    for c in admins.iter_mut() {
        c.user_add("root", "rootpw", None).await.unwrap();
        c.user_grant_role("root", "root").await.unwrap();
        c.user_add("alice", "alicepw", None).await.unwrap();
        c.role_add("reader").await.unwrap();
        c.role_grant_permission("reader", Permission::read("pub/").with_prefix())
            .await
            .unwrap();
        c.user_grant_role("alice", "reader").await.unwrap();
        c.auth_enable().await.unwrap();
    }
    let mut alices = Vec::new();
    for ep in [&pair.direct, &pair.proxy.endpoint] {
        let opts = ConnectOptions::new().with_user("alice", "alicepw");
        alices.push(Client::connect([ep.as_str()], Some(opts)).await.expect("alice logs in"));
    }
    // Allowed: reading under pub/.
    for c in alices.iter_mut() {
        c.get("pub/x", None).await.expect("alice may read pub/");
    }
    same_error!(alices, Code::PermissionDenied, "etcdserver: permission denied", |c| c
        .get("secret", None)
        .await);
    same_error!(alices, Code::PermissionDenied, "etcdserver: permission denied", |c| c
        .put("pub/x", "v", None)
        .await);

    // Wrong password, and a request with no credentials while auth is on.
    let mut wrong = Vec::new();
    for ep in [&pair.direct, &pair.proxy.endpoint] {
        let opts = ConnectOptions::new().with_user("alice", "nope");
        wrong.push(status_of(
            Client::connect([ep.as_str()], Some(opts))
                .await
                .err()
                .expect("bad password"),
        ));
    }
    assert_eq!(wrong[0], wrong[1]);
    assert_eq!(
        wrong[1],
        (
            Code::InvalidArgument,
            "etcdserver: authentication failed, invalid user ID or password".to_string()
        )
    );
    let mut anon = pair.clients().await;
    same_error!(anon, Code::InvalidArgument, "etcdserver: user name is empty", |c| c
        .get("pub/x", None)
        .await);
}

#[tokio::test]
async fn request_limit_is_configurable_and_responses_have_no_limit() {
    let etcd = Etcd::start().await;
    let proxy = Proxy::start(&format!(
        "maxRequestBytes: 100000\ndataStore: default\ndataStores:\n  default:\n    endpoints: [\"{}\"]\n",
        etcd.endpoint
    ))
    .await;
    let mut c = client(&proxy.endpoint).await;
    let value = vec![b'v'; 700_000];
    let limit = 100_000 + 512 * 1024;
    match c.put("k", value, None).await {
        Err(e) => assert_eq!(
            status_of(e),
            (
                Code::ResourceExhausted,
                format!("grpc: received message larger than max ({} vs. {limit})", 700_000 + 7)
            )
        ),
        Ok(_) => panic!("a request over maxRequestBytes + 512 KiB must be refused"),
    }
    // Responses: 12 values of 1.4 MiB come back in one Range (about 17 MiB), through etcdctl,
    // whose client accepts any size, as kube-apiserver's does.
    let mut direct = client(&etcd.endpoint).await;
    for i in 0..12 {
        direct
            .put(format!("big/{i:02}"), vec![b'a' + i as u8; 1_400_000], None)
            .await
            .unwrap();
    }
    let out = crate::support::etcdctl_ok(&proxy.endpoint, &["get", "--prefix", "big/", "--print-value-only"]);
    assert!(out.len() > 12 * 1_400_000, "got {} bytes", out.len());
}
