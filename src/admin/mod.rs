//! The admin HTTP API, on its own listener (loopback by default):
//! `/healthz`, `/readyz`, `/metrics` and `/v1/status`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router as HttpRouter};
use serde::Serialize;

mod migrations;

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
}

pub fn routes(state: Arc<AdminState>) -> HttpRouter {
    HttpRouter::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/migrations", post(migrations::start))
        .route("/v1/migrations/abort", post(migrations::abort))
        .route("/v1/cleanup", post(migrations::cleanup))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the authoritative datastore has an endpoint that answers.
async fn readyz(State(s): State<Arc<AdminState>>) -> Response {
    let route = s.router.route();
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
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub version: &'static str,
    /// The authoritative datastore.
    pub data_store: String,
    pub phase: &'static str,
    pub ready: bool,
    pub uptime_seconds: u64,
    pub data_stores: Vec<DatastoreStatus>,
    /// The current or last migration (null: none has run since the proxy started).
    pub migration: Option<crate::migrate::MigrationView>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DatastoreStatus {
    pub name: String,
    pub ready: bool,
    pub endpoints: Vec<EndpointStatus>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    pub url: String,
    pub healthy: bool,
}

async fn status(State(s): State<Arc<AdminState>>) -> Json<Status> {
    let snap = s.migrator.snapshot();
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
    Json(Status {
        version: env!("CARGO_PKG_VERSION"),
        data_store: route.datastore_name.clone(),
        phase: snap.phase.as_str(),
        ready: route.datastore.is_ready(),
        uptime_seconds: s.started.elapsed().as_secs(),
        data_stores,
        migration: snap.migration,
    })
}
