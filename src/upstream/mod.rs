//! Connections to the datastores (etcd clusters).
//!
//! A [`Datastore`] keeps one HTTP/2 channel per endpoint, prefers the endpoint that answered
//! last, and moves to the next one when a connection fails. A request is sent again only
//! when that cannot apply it twice: always when it never left the proxy, and after a lost
//! response only if it is idempotent.

mod auth;
mod tls;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Response, Status};

use crate::config::DataStore as DataStoreConfig;
use crate::error::ProxyError;
use crate::metrics::{DatastoreLabels, EndpointLabels, Metrics};
use crate::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::proto::etcdserverpb::StatusRequest;

pub use auth::TokenSource;

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
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(io.kind(), ConnectionRefused | AddrNotAvailable | NotConnected | TimedOut) {
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
                channel: ep.connect_lazy(),
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
                        last_detail = status.message().to_string();
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
                        tracing::warn!(datastore = %self.name, endpoint = %self.endpoints[idx].url, error = %status.message(), "endpoint unreachable; trying the next one");
                        last_detail = format!("{}: {}", self.endpoints[idx].url, status.message());
                        self.mark_failed(idx);
                    }
                    Failure::Lost => {
                        self.mark_failed(idx);
                        if retry == Retry::IfNotSent {
                            return Err(ProxyError::OutcomeUnknown {
                                datastore: self.name.clone(),
                                endpoint: self.endpoints[idx].url.clone(),
                                detail: status.message().to_string(),
                            });
                        }
                        tracing::warn!(datastore = %self.name, endpoint = %self.endpoints[idx].url, error = %status.message(), "connection lost; resending the idempotent request elsewhere");
                        last_detail = format!("{}: {}", self.endpoints[idx].url, status.message());
                    }
                },
            }
        }
        Err(ProxyError::NoEndpoint {
            datastore: self.name.clone(),
            detail: last_detail,
        })
    }

    /// Probes every endpoint with Maintenance.Status, forever, to keep health current.
    pub fn spawn_health_probe(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let ds = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                ds.probe_all().await;
            }
        })
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
            let ok = match client.status(req).await {
                Ok(_) => true,
                // An answer, even an error such as an auth failure, shows the member is up.
                Err(s) => classify(&s) == Failure::Answered,
            };
            (idx, ok)
        });
        let results = futures::future::join_all(probes).await;
        let mut any = false;
        for (idx, ok) in results {
            let was = self.endpoints[idx].healthy.swap(ok, Ordering::Relaxed);
            if was != ok {
                if ok {
                    tracing::info!(datastore = %self.name, endpoint = %self.endpoints[idx].url, "endpoint is healthy again");
                } else {
                    tracing::warn!(datastore = %self.name, endpoint = %self.endpoints[idx].url, "endpoint failed its health probe");
                }
            }
            self.set_up_gauge(idx, ok);
            any |= ok;
        }
        any
    }
}
