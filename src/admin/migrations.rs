//! The state-changing half of the admin API: start and abort migrations, clean up a
//! datastore the tenant left. Every call needs `Authorization: Bearer <admin token>`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::AdminState;
use crate::migrate::{AbortError, CleanupError, StartError};

fn refuse(code: StatusCode, message: impl std::fmt::Display) -> Response {
    (code, Json(json!({ "error": message.to_string() }))).into_response()
}

/// Equal tokens, compared in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8;
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0);
    }
    diff == 0 && a.len() == b.len()
}

/// Checks the bearer token; the refusal to send otherwise.
fn authorized(s: &AdminState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let Some(token) = &s.token else {
        return Err(Box::new(refuse(
            StatusCode::FORBIDDEN,
            "no admin token is configured (admin.tokenFile); state-changing calls are disabled",
        )));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if same(given.trim().as_bytes(), token.expose().as_bytes()) {
        return Ok(());
    }
    let mut r = refuse(
        StatusCode::UNAUTHORIZED,
        "a valid admin token is needed (Authorization: Bearer <token from admin.tokenFile>)",
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    Err(Box::new(r))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    to: String,
    #[serde(default)]
    overwrite: bool,
}

pub async fn start(State(s): State<Arc<AdminState>>, headers: HeaderMap, body: Json<StartBody>) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return *r;
    }
    match s.migrator.start(&body.to, body.overwrite, "api") {
        Ok(view) => (StatusCode::ACCEPTED, Json(view)).into_response(),
        Err(e @ StartError::UnknownDatastore(_)) => refuse(StatusCode::NOT_FOUND, e),
        Err(e) => refuse(StatusCode::CONFLICT, e),
    }
}

pub async fn abort(State(s): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return *r;
    }
    match s.migrator.abort() {
        Ok(view) => Json(view).into_response(),
        Err(e @ (AbortError::NotRunning | AbortError::Committing(_))) => refuse(StatusCode::CONFLICT, e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupBody {
    datastore: String,
}

pub async fn cleanup(State(s): State<Arc<AdminState>>, headers: HeaderMap, body: Json<CleanupBody>) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return *r;
    }
    match s.migrator.cleanup(&body.datastore).await {
        Ok(deleted) => Json(json!({ "datastore": body.datastore, "deleted": deleted })).into_response(),
        Err(e @ CleanupError::UnknownDatastore(_)) => refuse(StatusCode::NOT_FOUND, e),
        Err(e @ CleanupError::Datastore(_)) => refuse(StatusCode::BAD_GATEWAY, e),
        Err(e) => refuse(StatusCode::CONFLICT, e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_compare_whole() {
        assert!(super::same(b"abc", b"abc"));
        assert!(!super::same(b"abc", b"abd"));
        assert!(!super::same(b"ab", b"abc"));
        assert!(!super::same(b"", b"abc"));
        assert!(!super::same(b"abc", b""));
    }
}
