//! The endpoints for whoever runs ordersync, served without a token on the internal listener
//! (`[admin] listen`): `/healthz` (is the process's scheduling alive), `/readyz` (does the
//! database answer, with every migration applied) and `/metrics` (Prometheus text).

use crate::metrics::{StateLabels, StreamLabels, metrics};
use crate::store::Store;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// When the scheduling loop last showed it is alive.
#[derive(Debug, Default)]
pub struct Liveness {
    /// Unix milliseconds of the last beat; 0 before the first.
    last_beat_ms: AtomicI64,
}

impl Liveness {
    pub fn beat(&self) {
        self.last_beat_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// Time since the last beat, `None` before the first.
    pub fn since_last_beat(&self) -> Option<Duration> {
        let last = self.last_beat_ms.load(Ordering::Relaxed);
        (last > 0).then(|| {
            Duration::from_millis(u64::try_from(Utc::now().timestamp_millis() - last).unwrap_or(0))
        })
    }
}

#[derive(Clone)]
pub struct OpsState {
    pub store: Arc<dyn Store>,
    pub liveness: Arc<Liveness>,
    /// `/healthz` fails when the last beat is older than this.
    pub stale_after: Duration,
}

pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

/// Alive when the scheduler ticked recently; never asks the database or an upstream, so an
/// outage elsewhere does not get the process restarted.
async fn healthz(State(state): State<OpsState>) -> Response {
    match state.liveness.since_last_beat() {
        Some(since) if since <= state.stale_after => (
            StatusCode::OK,
            axum::Json(json!({ "alive": true, "last_beat_seconds_ago": since.as_secs_f64() })),
        )
            .into_response(),
        since => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "alive": false,
                "reason": match since {
                    Some(since) => format!("the scheduler has not ticked for {}s", since.as_secs()),
                    None => "the scheduler has not ticked yet".to_owned(),
                },
            })),
        )
            .into_response(),
    }
}

async fn readyz(State(state): State<OpsState>) -> Response {
    match state.store.readiness().await {
        Ok(()) => (StatusCode::OK, axum::Json(json!({ "ready": true }))).into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "ready": false, "reason": error.to_string() })),
        )
            .into_response(),
    }
}

/// The counters as they are, and the gauges the database knows, read now. When the database
/// does not answer, those gauges are left out (and the counters still served).
async fn metrics_text(State(state): State<OpsState>) -> Response {
    let metrics = metrics();
    let now = Utc::now();
    if let Ok(streams) = state.store.streams().await {
        metrics.cursor_lag.clear();
        metrics.last_success.clear();
        for stream in streams {
            let labels = StreamLabels {
                provider: stream.stream.provider.as_str().to_owned(),
                account: stream.stream.account.clone(),
                stream: stream.stream.resource.clone(),
            };
            if let Some(cursor) = stream.cursor.as_deref().and_then(|c| c.parse::<i64>().ok()) {
                metrics
                    .cursor_lag
                    .get_or_create(&labels)
                    .set((now.timestamp() - cursor) as f64);
            }
            if let Some(at) = stream.last_success_at {
                metrics
                    .last_success
                    .get_or_create(&labels)
                    .set(at.timestamp_millis() as f64 / 1000.0);
            }
        }
    }
    if let Ok(counts) = state.store.action_counts().await {
        metrics.actions.clear();
        for count in counts {
            metrics
                .actions
                .get_or_create(&StateLabels {
                    provider: count.provider,
                    account: count.account,
                    state: count.state,
                })
                .set(count.count);
        }
    }
    match metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
