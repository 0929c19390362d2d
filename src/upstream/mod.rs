//! Connections to the datastores (etcd clusters).
//!
//! A [`Datastore`] keeps one HTTP/2 channel per endpoint, prefers the endpoint that answered
//! last, and moves to the next one when a connection fails. A request is sent again only
//! when that cannot apply it twice: always when it never left the proxy, and after a lost
//! response only if it is idempotent.

mod auth;
pub mod calls;
mod tls;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Response, Status};

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::coalesce::Coalesced;
use crate::config::DataStore as DataStoreConfig;
use crate::error::ProxyError;
use crate::metrics::{DatastoreLabels, EndpointLabels, Metrics};
use crate::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::proto::etcdserverpb::StatusRequest;

pub use auth::TokenSource;

/// Builds a generated client with no limit on what the datastore may send back.
macro_rules! client {
    ($client:ident, $channel:expr) => {
        $client::new($channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    };
}
pub(crate) use client;

/// A Txn whose answer is kept as etcd encoded it, to be read with `codec::wire` and
/// passed on without decoding.
pub async fn txn_encoded(
    channel: Channel,
    request: tonic::Request<crate::proto::etcdserverpb::TxnRequest>,
) -> Result<Response<bytes::Bytes>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    grpc.ready().await.map_err(crate::error::channel_not_ready)?;
    let path = http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Txn");
    grpc.unary(request, path, crate::codec::KeepEncoded::default()).await
}

/// A request of the proxy's own (the migration's), with the proxy's auth token if any.
pub fn own_request<T>(msg: T, token: Option<AsciiMetadataValue>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut().insert("token", t);
    }
    r
}

/// How a request may be sent again after a connection failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Reads and other requests that change nothing: resend after any connection failure.
    Idempotent,
    /// Writes: resend only if the request certainly never reached the datastore.
    IfNotSent,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("datastore {datastore:?}: endpoint {endpoint:?}: {message}")]
    Endpoint {
        datastore: String,
        endpoint: String,
        message: String,
    },
    #[error("datastore {datastore:?}: tls: {message}")]
    Tls { datastore: String, message: String },
}

/// What a failed call tells about the connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The datastore answered; its status is the result.
    Answered,
    /// The connection could not be made: the request was not sent.
    NotSent,
    /// The connection broke; the request may have been applied.
    Lost,
}

/// Statuses made by tonic from a transport error carry that error as their source; a status
/// that etcd sent has none.
pub(crate) fn classify(status: &Status) -> Failure {
    use std::error::Error as _;
    let Some(mut err) = status.source() else {
        return Failure::Answered;
    };
    loop {
        // Anything that failed while connecting (TCP, or a TLS handshake the proxy refused,
        // e.g. an untrusted server certificate) never carried the request.
        if err.downcast_ref::<tonic::ConnectError>().is_some() {
            return Failure::NotSent;
        }
        // hyper cancels a request it never handed to the connection ("connection closed",
        // "connection was not ready") and gives it back unsent.
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return Failure::NotSent;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused | AddrNotAvailable | NotConnected | TimedOut
            ) {
                return Failure::NotSent;
            }
            if is_handshake_refusal(io) {
                return Failure::NotSent;
            }
        }
        // hyper-util's connector names its failures this way.
        let text = err.to_string();
        if text.contains("tcp connect error") || text.contains("client error (Connect)") {
            return Failure::NotSent;
        }
        match err.source() {
            Some(next) => err = next,
            None => return Failure::Lost,
        }
    }
}

/// With TLS 1.3 the client finishes its handshake before the server has checked the
/// client's certificate, so a refusal (no certificate, unknown CA, ...) arrives as a fatal
/// alert on what looks like an open connection. The server sends these alerts only while
/// checking the handshake, before it reads any request, so nothing was applied.
fn is_handshake_refusal(io: &std::io::Error) -> bool {
    if io.kind() != std::io::ErrorKind::InvalidData {
        return false;
    }
    let Some(inner) = io.get_ref() else { return false };
    // rustls words it "received fatal alert: <AlertDescription>".
    let text = inner.to_string();
    let Some(alert) = text.strip_prefix("received fatal alert: ") else {
        return false;
    };
    alert.contains("Certificate")
        || matches!(
            alert,
            "UnknownCA"
                | "AccessDenied"
                | "HandshakeFailure"
                | "InsufficientSecurity"
                | "ProtocolVersion"
                | "NoApplicationProtocol"
        )
}

/// A status from a failed call, with the transport error behind it when there is one
/// (tonic's own message for those is often just "transport error").
pub(crate) fn describe(status: &Status) -> String {
    use std::error::Error as _;
    let mut text = status.message().to_string();
    let mut cause = status.source();
    let mut innermost = None;
    while let Some(e) = cause {
        innermost = Some(e);
        cause = e.source();
    }
    if let Some(e) = innermost {
        let inner = e.to_string();
        if !inner.is_empty() && !text.contains(&inner) {
            text = format!("{text}: {inner}");
        }
    }
    text
}

pub struct UpstreamEndpoint {
    pub url: String,
    channel: Channel,
    healthy: AtomicBool,
}

impl UpstreamEndpoint {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

pub struct Datastore {
    pub name: String,
    endpoints: Vec<UpstreamEndpoint>,
    /// Index of the endpoint requests go to first.
    preferred: AtomicUsize,
    token: Option<TokenSource>,
    metrics: Arc<Metrics>,
}

/// TCP connections to etcd, with writes gathered per call (see coalesce.rs). TLS, when
/// configured, is layered on top by tonic.
type Connector = tower::util::MapResponse<HttpConnector, fn(TokioIo<TcpStream>) -> TokioIo<Coalesced<TcpStream>>>;

fn connector() -> Connector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(3)));
    tower::ServiceExt::map_response(http, |io| TokioIo::new(Coalesced::new(io.into_inner())))
}

impl Datastore {
    pub fn new(cfg: &DataStoreConfig, metrics: Arc<Metrics>) -> Result<Arc<Self>, UpstreamError> {
        let tls = tls::client_config(cfg)?;
        let mut endpoints = Vec::with_capacity(cfg.endpoints.len());
        for url in &cfg.endpoints {
            let err = |message: String| UpstreamError::Endpoint {
                datastore: cfg.name.clone(),
                endpoint: url.clone(),
                message,
            };
            let mut ep = Endpoint::from_shared(url.clone())
                .map_err(|e| err(e.to_string()))?
                .connect_timeout(Duration::from_secs(3))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true)
                .initial_stream_window_size(Some(4 << 20))
                .initial_connection_window_size(Some(8 << 20));
            if let Some(tls) = &tls {
                ep = ep.tls_config(tls.clone()).map_err(|e| err(e.to_string()))?;
            }
            metrics
                .endpoint_up
                .get_or_create(&EndpointLabels {
                    datastore: cfg.name.clone(),
                    endpoint: url.clone(),
                })
                .set(0);
            endpoints.push(UpstreamEndpoint {
                url: url.clone(),
                channel: ep.connect_with_connector_lazy(connector()),
                healthy: AtomicBool::new(true),
            });
        }
        let token = cfg
            .basic_auth
            .as_ref()
            .map(|(user, password)| TokenSource::new(user.clone(), password.clone()));
        Ok(Arc::new(Datastore {
            name: cfg.name.clone(),
            endpoints,
            preferred: AtomicUsize::new(0),
            token,
            metrics,
        }))
    }

    pub fn endpoints(&self) -> &[UpstreamEndpoint] {
        &self.endpoints
    }

    /// Ready when at least one endpoint answered its last probe.
    pub fn is_ready(&self) -> bool {
        self.endpoints.iter().any(UpstreamEndpoint::is_healthy)
    }

    /// The endpoint to use now: the preferred one, or the next healthy one after it.
    pub fn pick(&self) -> (usize, Channel) {
        let n = self.endpoints.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let idx = (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| self.endpoints[i].is_healthy())
            .unwrap_or(start);
        (idx, self.endpoints[idx].channel.clone())
    }

    pub fn endpoint_url(&self, idx: usize) -> &str {
        &self.endpoints[idx].url
    }

    /// Marks an endpoint as failed and moves the preference to the next one.
    pub fn mark_failed(&self, idx: usize) {
        let n = self.endpoints.len();
        self.endpoints[idx].healthy.store(false, Ordering::Relaxed);
        self.set_up_gauge(idx, false);
        let _ = self
            .preferred
            .compare_exchange(idx, (idx + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
        self.metrics
            .failovers
            .get_or_create(&DatastoreLabels {
                datastore: self.name.clone(),
            })
            .inc();
    }

    fn set_up_gauge(&self, idx: usize, up: bool) {
        self.metrics
            .endpoint_up
            .get_or_create(&EndpointLabels {
                datastore: self.name.clone(),
                endpoint: self.endpoints[idx].url.clone(),
            })
            .set(i64::from(up));
    }

    /// The proxy's own auth token for this datastore, when basicAuth is configured.
    pub async fn token(&self, channel: &Channel) -> Result<Option<AsciiMetadataValue>, Status> {
        match &self.token {
            Some(src) => src.get(channel).await.map(Some),
            None => Ok(None),
        }
    }

    pub fn invalidate_token(&self, used: &AsciiMetadataValue) {
        if let Some(src) = &self.token {
            src.invalidate(used);
        }
    }

    /// Sends a unary request, moving to other endpoints on connection failures as far as
    /// `retry` allows. `call` gets the channel and the proxy's own auth token, if any.
    pub async fn unary<T, F, Fut>(&self, retry: Retry, call: F) -> Result<Response<T>, ProxyError>
    where
        F: Fn(Channel, Option<AsciiMetadataValue>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let attempts = self.endpoints.len() + 1;
        let mut last_detail = String::new();
        let mut token_refreshed = false;
        let mut attempt = 0;
        while attempt < attempts {
            attempt += 1;
            let (idx, channel) = self.pick();
            let token = match self.token(&channel).await {
                Ok(t) => t,
                Err(status) => match classify(&status) {
                    Failure::Answered => return Err(ProxyError::Etcd(status)),
                    _ => {
                        last_detail = format!("{}: {}", self.endpoints[idx].url, describe(&status));
                        self.mark_failed(idx);
                        continue;
                    }
                },
            };
            match call(channel, token.clone()).await {
                Ok(resp) => return Ok(resp),
                Err(status) => match classify(&status) {
                    Failure::Answered => {
                        // An expired proxy token: fetch a new one once and resend.
                        if let Some(t) = &token {
                            if status.code() == tonic::Code::Unauthenticated && !token_refreshed {
                                self.invalidate_token(t);
                                token_refreshed = true;
                                attempt -= 1;
                                continue;
                            }
                        }
                        return Err(ProxyError::Etcd(status));
                    }
                    Failure::NotSent => {
                        let why = describe(&status);
                        tracing::warn!(datastore = %self.name, endpoint = %self.endpoints[idx].url, error = %why, "endpoint unreachable; trying the next one");
                        last_detail = format!("{}: {}", self.endpoints[idx].url, why);
                        self.mark_failed(idx);
                    }
                    Failure::Lost => {
                        self.mark_failed(idx);
                        if retry == Retry::IfNotSent {
                            return Err(ProxyError::OutcomeUnknown {
                                datastore: self.name.clone(),
                                endpoint: self.endpoints[idx].url.clone(),
                                detail: describe(&status),
                            });
                        }
                        let why = describe(&status);
                        tracing::warn!(datastore = %self.name, endpoint = %self.endpoints[idx].url, error = %why, "connection lost; resending the idempotent request elsewhere");
                        last_detail = format!("{}: {}", self.endpoints[idx].url, why);
                    }
                },
            }
        }
        Err(ProxyError::NoEndpoint {
            datastore: self.name.clone(),
            detail: last_detail,
        })
    }

    /// Probes every endpoint with Maintenance.Status until the process stops, to keep
    /// health current.
    pub fn spawn_health_probe(self: &Arc<Self>, every: Duration, background: &crate::tasks::Background) {
        let ds = Arc::clone(self);
        background.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                ds.probe_all().await;
            }
        });
    }

    /// One health probe round; returns whether any endpoint answered.
    pub async fn probe_all(&self) -> bool {
        let probes = self.endpoints.iter().enumerate().map(|(idx, ep)| async move {
            let mut client = MaintenanceClient::new(ep.channel.clone());
            let mut req = tonic::Request::new(StatusRequest {});
            req.set_timeout(Duration::from_secs(2));
            if let Ok(Some(t)) = self.token(&ep.channel).await {
                req.metadata_mut().insert("token", t);
            }
            let result = match client.status(req).await {
                Ok(_) => Ok(()),
                // An answer, even an error such as an auth failure, shows the member is up.
                Err(s) if classify(&s) == Failure::Answered => Ok(()),
                Err(s) => Err(describe(&s)),
            };
            (idx, result)
        });
        let results = futures::future::join_all(probes).await;
        let mut any = false;
        for (idx, result) in results {
            let ok = result.is_ok();
            let was = self.endpoints[idx].healthy.swap(ok, Ordering::Relaxed);
            if was != ok {
                match &result {
                    Ok(()) => {
                        tracing::info!(datastore = %self.name, endpoint = %self.endpoints[idx].url, "endpoint is healthy again")
                    }
                    Err(why) => {
                        tracing::warn!(datastore = %self.name, endpoint = %self.endpoints[idx].url, error = %why, "endpoint failed its health probe")
                    }
                }
            }
            self.set_up_gauge(idx, ok);
            any |= ok;
        }
        any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_source(message: &str, source: impl std::error::Error + Send + Sync + 'static) -> Status {
        let mut s = Status::unavailable(message);
        s.set_source(Arc::new(source));
        s
    }

    /// A stand-in for the TLS library's error, worded as rustls words its alerts.
    #[derive(Debug)]
    struct Alert(&'static str);
    impl std::fmt::Display for Alert {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "received fatal alert: {}", self.0)
        }
    }
    impl std::error::Error for Alert {}

    #[test]
    fn an_answer_from_etcd_has_no_source() {
        assert_eq!(
            classify(&Status::unavailable("etcdserver: leader changed")),
            Failure::Answered
        );
    }

    #[test]
    fn connect_failures_and_refused_handshakes_were_not_sent() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "invalid peer certificate: UnknownIssuer",
        );
        let s = with_source("transport error", tonic::ConnectError(Box::new(io)));
        assert_eq!(classify(&s), Failure::NotSent);
        for alert in ["BadCertificate", "CertificateRequired", "UnknownCA"] {
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, Alert(alert));
            let s = with_source("transport error", io);
            assert_eq!(classify(&s), Failure::NotSent, "{alert}");
            assert_eq!(describe(&s), format!("transport error: received fatal alert: {alert}"));
        }
    }

    #[test]
    fn a_broken_connection_may_have_carried_the_request() {
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        assert_eq!(classify(&with_source("transport error", io)), Failure::Lost);
        // Any other alert is not a handshake refusal.
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, Alert("BadRecordMac"));
        assert_eq!(classify(&with_source("transport error", io)), Failure::Lost);
    }
}
