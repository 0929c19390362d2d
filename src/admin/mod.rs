//! The admin HTTP API, on its own listener (loopback by default):
//! `/healthz`, `/readyz`, `/metrics`, `/v1/status` (`?watch=true`: a JSON line per
//! change), and the state-changing calls (bearer token) in [`migrations`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router as HttpRouter};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub mod gateway;
mod migrations;
pub mod readiness;

/// Fault injection for tests (builds with the `failpoints` feature only).
#[cfg(feature = "failpoints")]
pub(crate) mod failpoints {
    use axum::extract::Path;
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::Json;

    pub async fn list() -> Response {
        Json(crate::failpoint::list()).into_response()
    }

    pub async fn set(Path(name): Path<String>, actions: String) -> Response {
        match crate::failpoint::configure(&name, &actions) {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => super::refuse(StatusCode::BAD_REQUEST, e),
        }
    }

    pub async fn remove(Path(name): Path<String>) -> Response {
        crate::failpoint::remove(&name);
        StatusCode::NO_CONTENT.into_response()
    }
}

use crate::config::Secret;
use crate::metrics::Metrics;
use crate::route::Router;

pub struct AdminState {
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
    pub migrator: Arc<crate::migrate::Migrator>,
    /// Needed (as a bearer token) by calls that change state.
    pub token: Option<Secret>,
    pub started: Instant,
    /// Whether requests to the tenant's datastore succeed (checked in the background).
    pub readiness: Arc<readiness::Readiness>,
    /// The admin listener is on a loopback address: only this host reaches it.
    pub loopback: bool,
}

pub fn routes(state: Arc<AdminState>) -> HttpRouter {
    // The token is checked before anything reads the body.
    let changes = HttpRouter::new()
        .route("/v1/migrations", post(migrations::start))
        .route("/v1/migrations/abort", post(migrations::abort))
        .route("/v1/cleanup", post(migrations::cleanup));
    #[cfg(feature = "failpoints")]
    let changes = changes.route(
        "/v1/failpoints/{name}",
        axum::routing::put(failpoints::set).delete(failpoints::remove),
    );
    let changes = changes.route_layer(axum::middleware::from_fn_with_state(state.clone(), require_token));
    // The status names endpoints, hosts and pids: beyond this host, only with the token.
    let status_route = HttpRouter::new().route("/v1/status", get(status));
    let status_route = if state.loopback {
        status_route
    } else {
        status_route.route_layer(axum::middleware::from_fn_with_state(state.clone(), require_token))
    };
    let reads = HttpRouter::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(status_route);
    #[cfg(feature = "failpoints")]
    let reads = reads.route("/v1/failpoints", get(failpoints::list));
    reads.merge(changes).with_state(state)
}

/// `{"error": message}` with `code`.
pub(crate) fn refuse(code: StatusCode, message: impl std::fmt::Display) -> Response {
    (code, Json(json!({ "error": message.to_string() }))).into_response()
}

/// Equal tokens, in time that depends only on the configured token's length.
fn same_token(given: &[u8], want: &[u8]) -> bool {
    let mut diff = given.len() ^ want.len();
    for (i, w) in want.iter().enumerate() {
        diff |= usize::from(w ^ given.get(i).copied().unwrap_or(!w));
    }
    std::hint::black_box(diff) == 0
}

/// The token an `Authorization: Bearer <token>` header carries (the scheme is
/// case-insensitive, RFC 9110).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Lets a state-changing call through only with the admin token; answers the body
/// rejections of the calls (bad JSON, wrong content type) as `{"error": ...}` too.
async fn require_token(State(s): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    check_token(s.token.as_ref(), req, next).await
}

/// Runs `next` only for a request that carries the admin token.
pub(crate) async fn check_token(token: Option<&crate::config::Secret>, req: Request, next: Next) -> Response {
    let Some(token) = token else {
        return refuse(
            StatusCode::FORBIDDEN,
            "no admin token is configured (admin.tokenFile); state-changing calls are disabled",
        );
    };
    let given = bearer(req.headers()).unwrap_or("").to_string();
    if !same_token(given.as_bytes(), token.expose().as_bytes()) {
        tracing::warn!(path = %req.uri().path(), "admin API: a state-changing call without a valid token was refused");
        let mut r = refuse(
            StatusCode::UNAUTHORIZED,
            "a valid admin token is needed (Authorization: Bearer <token from admin.tokenFile>)",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return r;
    }
    let resp = next.run(req).await;
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !resp.status().is_client_error() || is_json {
        return resp;
    }
    // An extractor's rejection (plain text): same shape as every other error.
    let code = resp.status();
    match axum::body::to_bytes(resp.into_body(), 64 * 1024).await {
        Ok(text) => refuse(code, String::from_utf8_lossy(&text).trim()),
        Err(_) => refuse(code, code.canonical_reason().unwrap_or("bad request")),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when requests to the tenant's datastore succeed: it has an endpoint that
/// answers, and the background check (see [`readiness`]) found nothing in the way.
async fn readyz(State(s): State<Arc<AdminState>>) -> Response {
    if let Some(problem) = s.readiness.problem() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{problem}\n")).into_response();
    }
    let route = s.router.route();
    if let Some(stranded) = &route.stranded {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the tenant moved from datastore {:?} to {:?}, which cannot be used yet: {}\n",
                route.datastore_name, stranded.moved_to, stranded.reason
            ),
        )
            .into_response();
    }
    if route.datastore.is_ready() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("datastore {:?} has no endpoint that answers\n", route.datastore_name),
        )
            .into_response()
    }
}

async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    metrics_response(&s.metrics)
}

/// The metrics in OpenMetrics text.
pub(crate) fn metrics_response(metrics: &Metrics) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
        .into_response()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub version: String,
    /// The authoritative datastore.
    pub data_store: String,
    pub phase: crate::migrate::Phase,
    pub ready: bool,
    /// Since when (Unix ms) this replica serves from `dataStore`.
    pub data_store_since_unix_ms: u64,
    /// Set when the tenant moved to another datastore that this replica cannot use yet:
    /// it refuses every request meanwhile.
    pub stranded: Option<String>,
    /// Why requests to the tenant's datastore fail, when they do (`ready` is false).
    #[serde(default)]
    pub problem: Option<String>,
    pub uptime_seconds: u64,
    pub data_stores: Vec<DatastoreStatus>,
    /// The current or last migration (null: none has run since the proxy started).
    pub migration: Option<crate::migrate::MigrationView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatastoreStatus {
    pub name: String,
    pub ready: bool,
    pub endpoints: Vec<EndpointStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    pub url: String,
    pub healthy: bool,
}

#[derive(Deserialize)]
pub struct StatusQuery {
    /// `true` (or `1`, or empty): stream a JSON line per change.
    watch: Option<String>,
}

/// The status document for `snap` (and the route and endpoints as they are now).
fn status_doc(s: &AdminState, snap: crate::migrate::Snapshot) -> Status {
    let route = s.router.route();
    let data_stores = s
        .router
        .datastores()
        .values()
        .map(|ds| DatastoreStatus {
            name: ds.name.clone(),
            ready: ds.is_ready(),
            endpoints: ds
                .endpoints()
                .iter()
                .map(|e| EndpointStatus {
                    url: e.url.clone(),
                    healthy: e.is_healthy(),
                })
                .collect(),
        })
        .collect();
    Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        data_store: route.datastore_name.clone(),
        phase: snap.phase,
        ready: route.stranded.is_none() && route.datastore.is_ready() && s.readiness.problem().is_none(),
        data_store_since_unix_ms: route.since_unix_ms,
        stranded: route
            .stranded
            .as_ref()
            .map(|x| format!("moved to {:?}, unusable: {}", x.moved_to, x.reason)),
        problem: s.readiness.problem().map(|p| p.to_string()),
        uptime_seconds: s.started.elapsed().as_secs(),
        data_stores,
        migration: snap.migration,
    }
}

/// How often a status watch looks for changes outside the migration's state (the
/// authoritative datastore, its readiness).
const WATCH_ROUTE_EVERY: Duration = Duration::from_secs(1);

async fn status(State(s): State<Arc<AdminState>>, Query(q): Query<StatusQuery>) -> Response {
    let watch = match q.watch.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("false" | "0") => false,
        Some("true" | "1" | "") => true,
        Some(other) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("watch={other:?}: expected true or false"),
            )
        }
    };
    if !watch {
        let snap = s.migrator.snapshot();
        return Json(status_doc(&s, snap)).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(status_lines(s)),
    )
        .into_response()
}

/// The status watch: the current document, then one per change of the migration's
/// state, of the authoritative datastore or of its readiness. Ends when the client goes
/// (the body is dropped) or the migrator does.
fn status_lines(s: Arc<AdminState>) -> impl futures::Stream<Item = Result<bytes::Bytes, Infallible>> {
    struct Watch {
        s: Arc<AdminState>,
        rx: tokio::sync::watch::Receiver<crate::migrate::Snapshot>,
        first: bool,
        /// The datastore and readiness of the last line.
        route: (String, bool),
    }
    let rx = s.migrator.subscribe();
    let state = Watch {
        s,
        rx,
        first: true,
        route: (String::new(), false),
    };
    futures::stream::unfold(state, |mut w| async move {
        if !w.first {
            loop {
                tokio::select! {
                    changed = w.rx.changed() => {
                        if changed.is_err() {
                            return None;
                        }
                        break;
                    }
                    _ = tokio::time::sleep(WATCH_ROUTE_EVERY) => {
                        let route = w.s.router.route();
                        if (route.datastore_name.as_str(), route.datastore.is_ready()) != (w.route.0.as_str(), w.route.1) {
                            break;
                        }
                    }
                }
            }
        }
        w.first = false;
        let snap = w.rx.borrow_and_update().clone();
        let doc = status_doc(&w.s, snap);
        w.route = (doc.data_store.clone(), doc.ready);
        let mut line = serde_json::to_vec(&doc).unwrap_or_default();
        line.push(b'\n');
        Some((Ok(bytes::Bytes::from(line)), w))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tower::ServiceExt;

    fn state(loopback: bool) -> Arc<AdminState> {
        let metrics = Arc::new(Metrics::new());
        let cfg = crate::config::DataStore {
            name: "a".into(),
            endpoints: vec!["http://127.0.0.1:1".into()],
            tls: None,
            basic_auth: None,
        };
        let stores = BTreeMap::from([(
            "a".to_string(),
            crate::upstream::Datastore::new(&cfg, metrics.clone()).unwrap(),
        )]);
        let fence = crate::route::FencePolicy {
            tenant_prefix: bytes::Bytes::from_static(b"/t/"),
            guard: crate::route::fence::Guard::new(b"/t/"),
            mode: crate::config::FenceMode::Hold,
            hold_timeout: Duration::from_secs(1),
        };
        let router = Arc::new(Router::new(stores, "a", fence).unwrap());
        let migrator = crate::migrate::Migrator::new(router.clone(), metrics.clone(), Default::default());
        Arc::new(AdminState {
            router,
            metrics,
            migrator,
            token: Some(Secret::from("t0ken")),
            started: Instant::now(),
            readiness: Default::default(),
            loopback,
        })
    }

    async fn get_status(state: Arc<AdminState>, token: Option<&str>) -> StatusCode {
        let mut req = Request::get("/v1/status");
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        routes(state)
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
            .status()
    }

    #[tokio::test]
    async fn beyond_loopback_the_status_needs_the_token() {
        assert_eq!(get_status(state(true), None).await, StatusCode::OK);
        assert_eq!(get_status(state(false), None).await, StatusCode::UNAUTHORIZED);
        assert_eq!(get_status(state(false), Some("wrong")).await, StatusCode::UNAUTHORIZED);
        assert_eq!(get_status(state(false), Some("t0ken")).await, StatusCode::OK);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token(b"abc", b"abc"));
        assert!(!same_token(b"abd", b"abc"));
        assert!(!same_token(b"ab", b"abc"));
        assert!(!same_token(b"abcd", b"abc"));
        assert!(!same_token(b"", b"abc"));
        assert!(!same_token(b"\xff\xff\xff", b"\0\0\0"));
    }

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert_eq!(bearer(&h), Some("s3cret"));
        h.insert(header::AUTHORIZATION, "bearer  s3cret ".parse().unwrap());
        assert_eq!(bearer(&h), Some("s3cret"));
        h.insert(header::AUTHORIZATION, "Basic czNjcmV0".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
