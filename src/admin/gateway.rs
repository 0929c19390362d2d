//! The admin API of a gateway replica (being built): health, readiness and metrics. The
//! tenant-level endpoints (`/v1/tenants`, migrations) come with the gateway's migrations.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router as HttpRouter;

use crate::metrics::Metrics;

pub struct GatewayAdmin {
    pub metrics: Arc<Metrics>,
    /// `None` when ready; else why not.
    pub problem: Box<dyn Fn() -> Option<String> + Send + Sync>,
}

pub fn routes(state: Arc<GatewayAdmin>) -> HttpRouter {
    HttpRouter::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(s): State<Arc<GatewayAdmin>>) -> Response {
    match (s.problem)() {
        Some(problem) => (StatusCode::SERVICE_UNAVAILABLE, format!("{problem}\n")).into_response(),
        None => "ok\n".into_response(),
    }
}

async fn metrics(State(s): State<Arc<GatewayAdmin>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}
