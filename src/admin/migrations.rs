//! The state-changing half of the admin API: start and abort migrations, clean up a
//! datastore the tenant left. Every call needs `Authorization: Bearer <admin token>`,
//! checked before these handlers run (`require_token` in mod.rs).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::AdminState;
use crate::migrate::{AbortError, CleanupError, StartError, WholeKeyspace};

/// `deleteWholeKeyspace: true`: the operator's word that a datastore holds this tenant
/// alone (needed to overwrite or clean up without a prefix).
fn whole(given: bool) -> WholeKeyspace {
    if given {
        WholeKeyspace::Allowed
    } else {
        WholeKeyspace::Refused
    }
}

fn refuse(code: StatusCode, message: impl std::fmt::Display) -> Response {
    (code, Json(json!({ "error": message.to_string() }))).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    to: String,
    #[serde(default)]
    overwrite: bool,
    #[serde(default, rename = "deleteWholeKeyspace")]
    delete_whole_keyspace: bool,
}

pub async fn start(State(s): State<Arc<AdminState>>, body: Json<StartBody>) -> Response {
    match s
        .migrator
        .start_checked(&body.to, body.overwrite, whole(body.delete_whole_keyspace), "api")
        .await
    {
        Ok(view) => (StatusCode::ACCEPTED, Json(view)).into_response(),
        Err(e @ StartError::UnknownDatastore(_)) => refuse(StatusCode::NOT_FOUND, e),
        Err(e) => refuse(StatusCode::CONFLICT, e),
    }
}

pub async fn abort(State(s): State<Arc<AdminState>>) -> Response {
    match s.migrator.abort() {
        Ok(view) => Json(view).into_response(),
        Err(e @ (AbortError::NotRunning | AbortError::Committing(_))) => refuse(StatusCode::CONFLICT, e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupBody {
    datastore: String,
    #[serde(default, rename = "deleteWholeKeyspace")]
    delete_whole_keyspace: bool,
}

pub async fn cleanup(State(s): State<Arc<AdminState>>, body: Json<CleanupBody>) -> Response {
    match s
        .migrator
        .cleanup(&body.datastore, whole(body.delete_whole_keyspace))
        .await
    {
        Ok(deleted) => Json(json!({ "datastore": body.datastore, "deleted": deleted })).into_response(),
        Err(e @ CleanupError::UnknownDatastore(_)) => refuse(StatusCode::NOT_FOUND, e),
        Err(e @ CleanupError::Datastore(_)) => refuse(StatusCode::BAD_GATEWAY, e),
        Err(e) => refuse(StatusCode::CONFLICT, e),
    }
}
