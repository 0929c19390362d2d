//! The reference relays the benches put beside cutover: this bench's own binary, started
//! again with [`RELAY_ENV`] set, accepts on one address and relays each connection to
//! another (one upstream connection per client connection) on a default tokio runtime,
//! so TOKIO_WORKER_THREADS applies to it as to cutover.
//!
//! * tcp: copies bytes and parses nothing. What it adds is the cost of one more process
//!   and loopback hop, the floor for any proxy.
//! * h2: terminates HTTP/2 on both sides (hyper server and client), passing every request
//!   and response on as it comes, parsed no further than HTTP/2: the floor for a proxy
//!   that routes requests, as cutover must.

/// Set on a copy of the bench binary that runs as a relay: `tcp|h2,LISTEN,UPSTREAM`.
pub const RELAY_ENV: &str = "CUTOVER_BENCH_RELAY";

/// The value of [`RELAY_ENV`] for a relay from `listen` to `upstream`.
pub fn spec(h2: bool, listen: &str, upstream: &str) -> String {
    format!("{},{listen},{upstream}", if h2 { "h2" } else { "tcp" })
}

/// Runs as a relay if this process was started as one; returns otherwise.
pub fn run_if_asked() {
    let Ok(spec) = std::env::var(RELAY_ENV) else {
        return;
    };
    let mut parts = spec.splitn(3, ',');
    let (Some(kind), Some(listen), Some(upstream)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("{RELAY_ENV}={spec:?}: expected tcp|h2,LISTEN,UPSTREAM");
    };
    relay(kind == "h2", listen, upstream.to_string())
}

fn relay(h2: bool, listen: &str, upstream: String) -> ! {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await.expect("relay bind");
        loop {
            let Ok((mut down, _)) = listener.accept().await else {
                continue;
            };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let _ = down.set_nodelay(true);
                let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = up.set_nodelay(true);
                if h2 {
                    relay_h2(down, up).await;
                } else {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
    });
    std::process::exit(0)
}

/// One hyper HTTP/2 server connection for the client, one hyper HTTP/2 client connection
/// to etcd: every request (head, body, trailers) and its response are passed on as they
/// come.
async fn relay_h2(down: tokio::net::TcpStream, up: tokio::net::TcpStream) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let Ok((sender, conn)) =
        hyper::client::conn::http2::handshake::<_, _, hyper::body::Incoming>(TokioExecutor::new(), TokioIo::new(up))
            .await
    else {
        return;
    };
    tokio::spawn(conn);
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let mut sender = sender.clone();
        async move { sender.send_request(req).await }
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(down), service)
        .await;
}
