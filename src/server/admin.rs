//! `/api/v1/actions`: queue actions, read them, retry them. Every request needs
//! `Authorization: Bearer <admin.token>`; every error is JSON naming the field at fault:
//! `{"error": {"field": "account", "message": "…"}}`.

use crate::config::{Config, Secret};
use crate::model::ActionState;
use crate::outbox::request::{ActionRequest, InvalidAction};
use crate::store::{ActionFilter, RetryFilter, Store};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::sync::Notify;

#[derive(Clone)]
pub struct AdminState {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub token: Secret,
    /// Wakes the dispatchers so a queued action goes out at once.
    pub wake: Arc<Notify>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/api/v1/actions", post(create).get(list))
        .route("/api/v1/actions/{id}", get(show))
        .route("/api/v1/actions/{id}/retry", post(retry))
        .with_state(state)
}

/// An error answer: status plus `{"error": {"field", "message"}}`.
struct ApiError {
    status: StatusCode,
    field: String,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, field: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl From<InvalidAction> for ApiError {
    fn from(invalid: InvalidAction) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            &invalid.field,
            invalid.message,
        )
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> Self {
        tracing::error!(%error, "admin API: database error");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "",
            "the database is unavailable; try again",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"field": self.field, "message": self.message}}));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// Compares digests, so the time taken says nothing about how much of the token matched.
fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Authorization",
                "send `Authorization: Bearer <admin.token>`",
            )
        })?;
    let digest = |text: &str| Sha256::digest(text.as_bytes());
    if digest(given.trim()) != digest(state.token.expose()) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Authorization",
            "the token is wrong; use the configured admin.token",
        ));
    }
    Ok(())
}

async fn create(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let mut reader = serde_json::Deserializer::from_slice(&body);
    let request: ActionRequest = serde_path_to_error::deserialize(&mut reader).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "" } else { path.as_str() };
        ApiError::new(StatusCode::BAD_REQUEST, field, e.inner().to_string())
    })?;
    let action = request.into_action(&state.config)?;
    let (stored, created) = state.store.enqueue(&action).await?;
    if created {
        state.wake.notify_waiters();
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({"action": stored, "created": created}))).into_response())
}

fn parse_id(text: &str) -> Result<i64, ApiError> {
    text.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "id",
            format!("`{text}` is not an action id (a whole number)"),
        )
    })
}

async fn show(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let id = parse_id(&id)?;
    match state.store.action(id).await? {
        Some(action) => Ok(Json(json!({"action": action})).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "id",
            format!("no action {id}"),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    account: Option<String>,
    limit: Option<String>,
}

async fn list(
    State(state): State<AdminState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let Query(query) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "query",
            format!(
                "{}; the parameters are state, account and limit",
                e.body_text()
            ),
        )
    })?;
    let filter_state = query
        .state
        .as_deref()
        .map(str::parse::<ActionState>)
        .transpose()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "state", e))?;
    let limit = match query.limit.as_deref() {
        None => 100,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "limit",
                    format!("`{text}` is not a number from 1 to 10000"),
                )
            })?,
    };
    let actions = state
        .store
        .actions(&ActionFilter {
            state: filter_state,
            account: query.account,
            limit,
        })
        .await?;
    Ok(Json(json!({"actions": actions})).into_response())
}

async fn retry(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let id = parse_id(&id)?;
    let Some(action) = state.store.action(id).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "id",
            format!("no action {id}"),
        ));
    };
    if state.store.retry_actions(&RetryFilter::One(id)).await? == 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "id",
            format!(
                "action {id} is {}; only dead or failed actions can be retried",
                action.state
            ),
        ));
    }
    state.wake.notify_waiters();
    let action = state.store.action(id).await?;
    Ok(Json(json!({"action": action})).into_response())
}
