//! Bad input on the gRPC port gets a clean error, and the proxy keeps serving everyone else.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

use crate::support::{client, Etcd, Proxy};

/// A codec that sends and receives raw bytes, to put arbitrary payloads on the wire.
#[derive(Default, Clone)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Calls `path` on `endpoint` with `payload` as the request message.
async fn raw_call(endpoint: &str, path: &'static str, payload: Bytes) -> Result<Bytes, Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect()
        .await
        .expect("connects");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    grpc.unary(
        tonic::Request::new(payload),
        http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(|r| r.into_inner())
}

async fn still_serving(proxy: &Proxy) {
    let mut c = client(&proxy.endpoint).await;
    c.put("alive", "yes", None).await.expect("proxy still serves");
    let r = c.get("alive", None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"yes");
}

#[tokio::test]
async fn garbage_bytes_close_the_connection_and_others_are_served() {
    let etcd = Etcd::start().await;
    let mut proxy = Proxy::start_for(&[&etcd]).await;
    // A client that keeps a healthy connection open the whole time.
    let mut bystander = client(&proxy.endpoint).await;
    bystander.put("before", "1", None).await.unwrap();

    for garbage in [
        &b"\x00\x01\x02garbage\xff\xfe not a preface"[..],
        &[0xffu8; 4096][..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff",
    ] {
        let mut s = tokio::net::TcpStream::connect(&proxy.endpoint).await.unwrap();
        s.write_all(garbage).await.unwrap();
        let mut buf = vec![0u8; 1024];
        // The server must close the connection (possibly after a GOAWAY), not hang.
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "connection with garbage was not closed");
    }
    assert!(proxy.try_exit().is_none(), "proxy exited");
    bystander.put("after", "1", None).await.expect("bystander still served");
    still_serving(&proxy).await;
}

#[tokio::test]
async fn http1_requests_get_a_plain_http_error() {
    let etcd = Etcd::start().await;
    let proxy = Proxy::start_for(&[&etcd]).await;
    let r = reqwest::get(format!("http://{}/v3/kv/range", proxy.endpoint))
        .await
        .expect("an HTTP answer");
    assert_eq!(r.status(), reqwest::StatusCode::BAD_REQUEST);
    let body = r.text().await.unwrap();
    assert!(body.contains("etcd v3 gRPC API over HTTP/2"), "{body}");
    still_serving(&proxy).await;
}

#[tokio::test]
async fn unknown_services_and_methods_are_unimplemented_as_in_etcd() {
    let etcd = Etcd::start().await;
    let proxy = Proxy::start_for(&[&etcd]).await;
    for path in [
        "/etcdserverpb.KV/NoSuchMethod",
        "/no.such.Service/Call",
        "/etcdserverpb.Lease/LeaseCheckpoint",
    ] {
        let direct = raw_call(&etcd.endpoint, path, Bytes::new())
            .await
            .expect_err("etcd refuses");
        let proxied = raw_call(&proxy.endpoint, path, Bytes::new())
            .await
            .expect_err("cutover refuses");
        assert_eq!(proxied.code(), Code::Unimplemented, "{path}: {proxied:?}");
        assert_eq!(
            (direct.code(), direct.message()),
            (proxied.code(), proxied.message()),
            "{path}: direct vs through cutover"
        );
    }
    still_serving(&proxy).await;
}

#[tokio::test]
async fn malformed_and_oversized_messages_get_clean_errors() {
    let etcd = Etcd::start().await;
    let proxy = Proxy::start_for(&[&etcd]).await;
    // Not a protobuf message: a field header that promises more bytes than there are.
    let bad = Bytes::from_static(b"\x0a\xff\xff\xff\x0fabc");
    let direct = raw_call(&etcd.endpoint, "/etcdserverpb.KV/Range", bad.clone())
        .await
        .expect_err("etcd refuses");
    let proxied = raw_call(&proxy.endpoint, "/etcdserverpb.KV/Range", bad)
        .await
        .expect_err("cutover refuses");
    // Both refuse as Internal; the wording is each decoder's own (Go's vs prost's).
    assert_eq!(direct.code(), Code::Internal, "{direct:?}");
    assert_eq!(proxied.code(), Code::Internal, "{proxied:?}");

    // Far beyond any limit: refused without being buffered whole, same code as etcd.
    let mut c = client(&proxy.endpoint).await;
    let giant = vec![b'g'; 20 * 1024 * 1024];
    match c.put("giant", giant, None).await {
        Err(etcd_client::Error::GRpcStatus(s)) => assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}"),
        other => panic!("expected ResourceExhausted, got {other:?}"),
    }
    still_serving(&proxy).await;
}

/// Sends one unary gRPC call over a bare HTTP/2 connection with `headers` as given (a
/// client library would refuse or rewrite the odd ones); returns `grpc-status` and
/// `grpc-message`.
async fn h2_call(endpoint: &str, path: &str, headers: &[(&str, &str)], message: &[u8]) -> (String, String) {
    let tcp = tokio::net::TcpStream::connect(endpoint).await.expect("connects");
    let (mut h2, conn) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(conn);
    let mut req = http::Request::post(format!("http://{endpoint}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (resp, mut body) = h2.send_request(req.body(()).unwrap(), false).expect("request sent");
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    body.send_data(Bytes::from(frame), true).expect("message sent");
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("an answer in time")
        .expect("an HTTP/2 response");
    let (head, mut recv) = resp.into_parts();
    let mut status = head.headers.get("grpc-status").map(|v| v.to_str().unwrap().to_string());
    let mut message = head
        .headers
        .get("grpc-message")
        .map(|v| v.to_str().unwrap().to_string());
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.expect("body");
        let _ = recv.flow_control().release_capacity(chunk.len());
    }
    if let Some(t) = recv.trailers().await.expect("trailers") {
        status = status.or(t.get("grpc-status").map(|v| v.to_str().unwrap().to_string()));
        message = message.or(t.get("grpc-message").map(|v| v.to_str().unwrap().to_string()));
    }
    (status.unwrap_or_default(), message.unwrap_or_default())
}

#[tokio::test]
async fn a_client_deadline_beyond_any_clock_is_clamped_not_a_panic() {
    let etcd = Etcd::start().await;
    let proxy = Proxy::start_for(&[&etcd]).await;
    // RangeRequest { key: "a" }; PutRequest { key: "a", value: "b" }.
    let range = [0x0a, 0x01, b'a'];
    let put = [0x0a, 0x01, b'a', 0x12, 0x01, b'b'];
    for timeout in ["100000000H", "99999999H", "18446744073709551615n"] {
        for (path, msg) in [
            ("/etcdserverpb.KV/Range", &range[..]),
            ("/etcdserverpb.KV/Put", &put[..]),
        ] {
            let (status, message) = h2_call(&proxy.endpoint, path, &[("grpc-timeout", timeout)], msg).await;
            assert!(
                status == "0" || status == "3",
                "{path} with grpc-timeout {timeout}: status {status:?} {message:?}"
            );
        }
    }
    assert!(!proxy.log().contains("panicked"), "{}", proxy.log());
    still_serving(&proxy).await;
}
