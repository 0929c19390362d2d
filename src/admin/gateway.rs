//! The admin API of a gateway replica: health, readiness, metrics, and its tenants: where
//! each lives, and moving one to another datastore of the pool (token needed).

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router as HttpRouter};
use serde::{Deserialize, Serialize};

use super::refuse;
use crate::gateway::dispatch::Gateway;
use crate::metrics::Metrics;
use crate::migrate::{CleanupError, MigrationView, StartError, WholeKeyspace};

pub struct GatewayAdmin {
    pub metrics: Arc<Metrics>,
    pub gateway: Arc<Gateway>,
    pub token: Option<crate::config::Secret>,
    /// `None` when ready; else why not.
    pub problem: Box<dyn Fn() -> Option<String> + Send + Sync>,
}

pub fn routes(state: Arc<GatewayAdmin>) -> HttpRouter {
    let changes = HttpRouter::new()
        .route("/v1/tenants/{name}/migrations", post(migrate))
        .route("/v1/tenants/{name}/cleanup", post(cleanup));
    #[cfg(feature = "failpoints")]
    let changes = changes.route(
        "/v1/failpoints/{name}",
        axum::routing::put(super::failpoints::set).delete(super::failpoints::remove),
    );
    let changes = changes.route_layer(axum::middleware::from_fn_with_state(state.clone(), require_token));
    #[cfg(feature = "failpoints")]
    let changes = changes.route("/v1/failpoints", get(super::failpoints::list));
    HttpRouter::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/tenants", get(tenants))
        .route("/v1/tenants/{name}", get(tenant))
        .route("/v1/datastores", get(datastores))
        .merge(changes)
        .with_state(state)
}

async fn require_token(State(s): State<Arc<GatewayAdmin>>, req: Request, next: Next) -> Response {
    super::check_token(s.token.as_ref(), req, next).await
}

async fn readyz(State(s): State<Arc<GatewayAdmin>>) -> Response {
    match (s.problem)() {
        Some(problem) => (StatusCode::SERVICE_UNAVAILABLE, format!("{problem}\n")).into_response(),
        None => "ok\n".into_response(),
    }
}

async fn metrics(State(s): State<Arc<GatewayAdmin>>) -> Response {
    super::metrics_response(&s.metrics)
}

/// One tenant as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantView {
    pub name: String,
    pub prefix: String,
    /// Where the catalog says it lives.
    pub home: String,
    /// Where this replica sends its requests now (`None`: it has not served it yet).
    pub serving_from: Option<String>,
    /// Since when (Unix ms) this replica has served it from there.
    #[serde(default)]
    pub serving_since_unix_ms: Option<u64>,
    /// Its keys where it lives now (`None`: that datastore did not answer).
    #[serde(default)]
    pub keys: Option<i64>,
    /// Its keys' and values' bytes where it lives now, when asked for (`?size=true`: etcd
    /// tells a range's size only by reading it whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
    /// Its latest migration seen by this replica.
    pub migration: Option<MigrationView>,
    /// Its role is gone: it is being deleted (its keys go, and it leaves the catalog).
    #[serde(default)]
    pub deleting: bool,
}

fn view(s: &GatewayAdmin, name: &str, with_context: bool) -> Option<TenantView> {
    let snapshot = s.gateway.catalog().snapshot();
    let t = snapshot.0.tenants.get(name)?;
    let served = if with_context {
        s.gateway.tenant(name).ok()
    } else {
        s.gateway.served(name)
    };
    Some(TenantView {
        name: name.to_string(),
        prefix: t.prefix.clone(),
        home: t.home.clone(),
        serving_from: served
            .as_ref()
            .map(|x| x.migrator.router().route().datastore_name.clone()),
        serving_since_unix_ms: served.as_ref().map(|x| x.migrator.router().route().since_unix_ms),
        migration: served.and_then(|x| x.migrator.snapshot().migration),
        keys: None,
        size_bytes: None,
        deleting: !snapshot.0.auth.roles.contains_key(name),
    })
}

/// What a tenant view may add on request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewQuery {
    /// Read the tenant's keys whole to tell its size.
    #[serde(default)]
    size: bool,
}

/// `v` with its key count (and, when asked, its size), read where the tenant lives now.
async fn with_keys(s: &GatewayAdmin, mut v: TenantView, size: bool) -> TenantView {
    let at = v.serving_from.clone().unwrap_or_else(|| v.home.clone());
    v.keys = s.gateway.count_keys(&at, &v.prefix).await.ok();
    if size {
        v.size_bytes = s.gateway.measure_bytes(&at, &v.prefix).await.ok();
    }
    v
}

async fn tenants(State(s): State<Arc<GatewayAdmin>>, Query(q): Query<ViewQuery>) -> Response {
    use futures::StreamExt;
    let snapshot = s.gateway.catalog().snapshot();
    let views: Vec<TenantView> = snapshot.0.tenants.keys().filter_map(|n| view(&s, n, false)).collect();
    // A count per tenant, a few at a time.
    let all: Vec<TenantView> = futures::stream::iter(views)
        .map(|v| with_keys(&s, v, q.size))
        .buffered(8)
        .collect()
        .await;
    Json(all).into_response()
}

async fn tenant(State(s): State<Arc<GatewayAdmin>>, Path(name): Path<String>, Query(q): Query<ViewQuery>) -> Response {
    match view(&s, &name, true) {
        Some(v) => Json(with_keys(&s, v, q.size).await).into_response(),
        None => refuse(StatusCode::NOT_FOUND, format!("no tenant {name:?}")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateBody {
    to: String,
}

async fn migrate(State(s): State<Arc<GatewayAdmin>>, Path(name): Path<String>, body: Json<MigrateBody>) -> Response {
    // A tenant whose role is gone is being deleted: its keys are about to go, not to move.
    if !s.gateway.catalog().snapshot().0.auth.roles.contains_key(&name) {
        return refuse(
            StatusCode::CONFLICT,
            format!("tenant {name:?} has no role any more: it is being deleted, not moved"),
        );
    }
    let served = match s.gateway.tenant(&name) {
        Ok(x) => x,
        Err(e) => return refuse(StatusCode::NOT_FOUND, e),
    };
    match served
        .migrator
        .start_checked(&body.to, false, WholeKeyspace::Refused, "api")
        .await
    {
        Ok(view) => (StatusCode::ACCEPTED, Json(view)).into_response(),
        Err(e @ StartError::UnknownDatastore(_)) => refuse(StatusCode::NOT_FOUND, e),
        Err(e) => refuse(StatusCode::CONFLICT, e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupBody {
    datastore: String,
}

/// Deletes a tenant's old copy from a datastore it has left (its "moved" marker stays).
async fn cleanup(State(s): State<Arc<GatewayAdmin>>, Path(name): Path<String>, body: Json<CleanupBody>) -> Response {
    let served = match s.gateway.tenant(&name) {
        Ok(x) => x,
        Err(e) => return refuse(StatusCode::NOT_FOUND, e),
    };
    match served.migrator.cleanup(&body.datastore, WholeKeyspace::Refused).await {
        Ok(deleted) => {
            Json(serde_json::json!({ "tenant": name, "datastore": body.datastore, "deleted": deleted })).into_response()
        }
        Err(e @ CleanupError::UnknownDatastore(_)) => refuse(StatusCode::NOT_FOUND, e),
        Err(e @ CleanupError::Datastore(_)) => refuse(StatusCode::BAD_GATEWAY, e),
        Err(e) => refuse(StatusCode::CONFLICT, e),
    }
}

/// One datastore of the pool: how many tenants the catalog places there.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatastoreView {
    pub name: String,
    pub tenants: usize,
}

async fn datastores(State(s): State<Arc<GatewayAdmin>>) -> Response {
    let snapshot = s.gateway.catalog().snapshot();
    let all: Vec<DatastoreView> = s
        .gateway
        .datastore_names()
        .into_iter()
        .map(|name| DatastoreView {
            tenants: snapshot.0.tenants.values().filter(|t| t.home == name).count(),
            name,
        })
        .collect();
    Json(all).into_response()
}
