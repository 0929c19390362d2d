//! What a client can make cutover hold is bounded: connections that send nothing are
//! closed, running out of descriptors makes the accept loop wait instead of spin, and a
//! connection's streams are limited by HTTP/2's own setting.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::support::{client, eventually, Etcd, Proxy};

fn config(etcd: &Etcd, limits: &str) -> String {
    format!(
        "limits: {limits}\ndataStore: default\ndataStores:\n  default:\n    endpoints: [\"{}\"]\n",
        etcd.endpoint
    )
}

/// Puts through `endpoint` for about `n` round trips; returns the slowest.
async fn slowest_of(endpoint: &str, n: usize) -> Duration {
    let mut c = client(endpoint).await;
    let mut worst = Duration::ZERO;
    for i in 0..n {
        let t = Instant::now();
        c.put(format!("k{}", i % 10), "v", None).await.expect("served");
        worst = worst.max(t.elapsed());
    }
    worst
}

#[tokio::test]
async fn connections_that_send_nothing_are_closed_and_others_are_served() {
    let etcd = Etcd::start().await;
    let proxy = Proxy::start(&config(&etcd, "{maxConnections: 64, handshakeTimeout: 1s}")).await;
    let rss_before = proxy.rss_kib();
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(tokio::net::TcpStream::connect(&proxy.endpoint).await.unwrap());
    }
    // A client beside them is served (once the silent ones holding the slots are closed).
    let worst = slowest_of(&proxy.endpoint, 50).await;
    // Every silent connection is closed by the proxy: a read sees the end.
    for (i, s) in silent.iter_mut().enumerate() {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("silent connection {i} still open after 20 s"))
            .unwrap_or(0);
        assert_eq!(n, 0, "connection {i} got data");
    }
    let rss_after = proxy.rss_kib();
    eprintln!(
        "200 silent connections: slowest put beside them {worst:?}; RSS {} -> {} KiB",
        rss_before, rss_after
    );
    slowest_of(&proxy.endpoint, 5).await;
}

#[tokio::test]
async fn out_of_descriptors_the_accept_loop_waits_instead_of_spinning() {
    let etcd = Etcd::start().await;
    let proxy = Proxy::start(&config(&etcd, "{handshakeTimeout: 30s}")).await;
    let pid = proxy.pid().unwrap() as i32;
    // Few descriptors: the listener, the datastore connections, a handful to spare.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64;
    let limit = libc::rlimit {
        rlim_cur: open + 8,
        rlim_max: open + 8,
    };
    // SAFETY: prlimit(2) on our own child with a valid struct; no memory is shared.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let mut held = Vec::new();
    for _ in 0..64 {
        held.push(tokio::net::TcpStream::connect(&proxy.endpoint).await.unwrap());
    }
    eventually("the proxy runs out of descriptors", Duration::from_secs(10), || async {
        proxy.log().contains("out of resources")
    })
    .await;
    let cpu = proxy.cpu_time();
    let wall = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = proxy.cpu_time() - cpu;
    let share = used.as_secs_f64() / wall.elapsed().as_secs_f64();
    eprintln!(
        "out of descriptors: {used:?} of CPU in {:?} ({:.0}%)",
        wall.elapsed(),
        share * 100.0
    );
    assert!(share < 0.5, "the accept loop spins: {:.0}% of a core", share * 100.0);
    drop(held);
    // Descriptors come back: served again.
    eventually("served again", Duration::from_secs(20), || async {
        let c = tokio::time::timeout(Duration::from_secs(2), client(&proxy.endpoint)).await;
        match c {
            Ok(mut c) => c.put("after", "v", None).await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
}

#[tokio::test]
async fn a_connection_gets_the_configured_number_of_streams() {
    let etcd = Etcd::start().await;
    let proxy = Proxy::start(&config(&etcd, "{maxStreamsPerConnection: 16}")).await;
    let tcp = tokio::net::TcpStream::connect(&proxy.endpoint).await.unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut h2 = h2.ready().await.unwrap();
    // The server's SETTINGS arrive with the first exchange.
    let req = http::Request::post(format!("http://{}/etcdserverpb.KV/Range", proxy.endpoint))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut body) = h2.send_request(req, false).unwrap();
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 3, 0x0a, 0x01, b'a']), true)
        .unwrap();
    let _ = resp.await.unwrap();
    assert_eq!(h2.current_max_send_streams(), 16);
}

/// The memory limit of cutover's container in deploy/.
const DEPLOY_MEMORY_LIMIT_KIB: u64 = 128 * 1024;

/// 10,000 watch streams (on ten connections): a client beside them is served, every
/// stream ends in the proxy when its client resets it, the memory comes back once they
/// have closed, and while they are open the proxy stays under the deploy limit (with a
/// debug build, which takes more than a release one).
#[tokio::test]
async fn ten_thousand_watch_streams_are_served_measured_and_ended_when_their_clients_go() {
    use cutover::proto::etcdserverpb::watch_client::WatchClient;
    use cutover::proto::etcdserverpb::{watch_request, WatchCreateRequest, WatchRequest};
    const STREAMS: usize = 10_000;
    const PER_CONNECTION: usize = 1_000;
    let etcd = Etcd::start().await;
    let proxy = Proxy::start(&config(&etcd, "{}")).await;
    let rss_idle = proxy.rss_kib();
    let mut held = Vec::new();
    for conn in 0..STREAMS / PER_CONNECTION {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.endpoint))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let opened = futures::future::join_all((0..PER_CONNECTION).map(|i| {
            let mut w = WatchClient::new(channel.clone());
            async move {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                tx.send(WatchRequest {
                    request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                        key: format!("w/{conn}/{i}").into_bytes().into(),
                        ..Default::default()
                    })),
                })
                .await
                .unwrap();
                let mut stream = w
                    .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                    .expect("watch opened")
                    .into_inner();
                let created = stream.message().await.expect("answer").expect("created");
                assert!(created.created);
                (tx, stream)
            }
        }))
        .await;
        held.extend(opened);
    }
    let rss_open = proxy.rss_kib();
    let worst = slowest_of(&proxy.endpoint, 50).await;
    drop(held);
    // The clients half-close and then reset their streams: the proxy must notice.
    eventually("the proxy ends every stream", Duration::from_secs(30), || async {
        let m = proxy.metrics().await;
        m.contains("cutover_open_watches 0") && m.contains("cutover_open_streams{kind=\"watch\"} 0")
    })
    .await;
    // The memory goes back to the system once they have closed.
    eventually("the proxy's memory comes back", Duration::from_secs(20), || async {
        let r = proxy.rss_kib();
        eprintln!("PROBE rss {r}");
        r < 64 * 1024
    })
    .await;
    let rss_closed = proxy.rss_kib();
    eprintln!(
        "{STREAMS} watch streams: RSS idle {rss_idle} KiB, open {rss_open} KiB, closed {rss_closed} KiB; \
         slowest put beside them {worst:?}"
    );
    assert!(
        rss_open < DEPLOY_MEMORY_LIMIT_KIB,
        "RSS {rss_open} KiB with {STREAMS} watches: over the deploy limit"
    );
}

/// Keep-alive streams end in the proxy when their clients reset them, and work while
/// open: each relays a keep-alive of a real lease.
#[tokio::test]
async fn keep_alive_streams_end_when_their_clients_go() {
    use cutover::proto::etcdserverpb::lease_client::LeaseClient;
    use cutover::proto::etcdserverpb::LeaseKeepAliveRequest;
    const STREAMS: usize = 500;
    let etcd = Etcd::start().await;
    let proxy = Proxy::start(&config(&etcd, "{}")).await;
    let mut c = client(&proxy.endpoint).await;
    let lease = c.lease_grant(60, None).await.unwrap().id();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.endpoint))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let opened = futures::future::join_all((0..STREAMS).map(|i| {
        let mut l = LeaseClient::new(channel.clone());
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tx.send(LeaseKeepAliveRequest { id: lease }).await.unwrap();
            let mut stream = l
                .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .expect("keep-alive opened")
                .into_inner();
            let answer = stream.message().await.expect("answer").expect("an answer");
            assert_eq!((answer.id, answer.ttl > 0), (lease, true), "stream {i}");
            (tx, stream)
        }
    }))
    .await;
    eventually("the proxy counts them open", Duration::from_secs(10), || async {
        proxy
            .metrics()
            .await
            .contains(&format!("cutover_open_streams{{kind=\"lease_keepalive\"}} {STREAMS}"))
    })
    .await;
    drop(opened);
    eventually("the proxy ends every stream", Duration::from_secs(20), || async {
        proxy
            .metrics()
            .await
            .contains("cutover_open_streams{kind=\"lease_keepalive\"} 0")
    })
    .await;
}
