//! The public webhook listener: `POST /webhooks/{provider}/{account}` (signed deliveries) and
//! `POST /webhooks/{provider}/{account}/{path_token}` (deliveries authenticated by an
//! unguessable URL). A delivery is checked on its raw bytes by the account's receiver (and, when
//! it names an upstream webhook, against the ones ordersync registered), stored in
//! `webhook_deliveries`, and only then answered 2xx; it is processed afterwards by the account's inbox worker. Deliveries that
//! arrive together are stored in one transaction (group commit), so many senders cost few
//! fsyncs while each one is still acknowledged only once it is durable.

use crate::config::WebhooksConfig;
use crate::model::ProviderKind;
use crate::providers::{PushReceiver, Refusal};
use crate::store::{DeliverySource, NewDelivery, Store};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot};

/// Deliveries stored per transaction at most.
const GROUP_COMMIT_MAX: usize = 256;
/// A delivery not stored within this is answered 503, so the sender retries it.
const STORE_DEADLINE: Duration = Duration::from_secs(10);

/// One account that receives pushes, and the worker to wake when one is stored.
#[derive(Clone)]
pub struct Hook {
    pub receiver: Arc<dyn PushReceiver>,
    pub wake: Arc<Notify>,
}

#[derive(Clone)]
pub struct WebhookState {
    hooks: Arc<HashMap<(ProviderKind, String), Hook>>,
    writer: mpsc::Sender<(NewDelivery, oneshot::Sender<Result<bool, String>>)>,
    store: Arc<dyn Store>,
}

/// The webhook routes, and the task that stores deliveries for them (it ends when the router
/// is dropped).
pub fn router(hooks: Vec<Hook>, store: Arc<dyn Store>, config: &WebhooksConfig) -> Router {
    let hooks = hooks
        .into_iter()
        .map(|hook| {
            let key = (hook.receiver.provider(), hook.receiver.account().to_owned());
            (key, hook)
        })
        .collect();
    let (writer, queue) = mpsc::channel(4 * GROUP_COMMIT_MAX);
    tokio::spawn(store_deliveries(queue, store.clone()));
    Router::new()
        .route("/webhooks/{provider}/{account}", post(receive))
        .route(
            "/webhooks/{provider}/{account}/{path_token}",
            post(receive_at),
        )
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(WebhookState {
            hooks: Arc::new(hooks),
            writer,
            store,
        })
}

async fn receive(
    State(state): State<WebhookState>,
    Path((provider, account)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    take(state, provider, account, None, headers, body).await
}

async fn receive_at(
    State(state): State<WebhookState>,
    Path((provider, account, path_token)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    take(state, provider, account, Some(path_token), headers, body).await
}

async fn take(
    state: WebhookState,
    provider: String,
    account: String,
    path_token: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let hook = provider
        .parse::<ProviderKind>()
        .ok()
        .and_then(|provider| state.hooks.get(&(provider, account.clone())));
    let Some(hook) = hook else {
        tracing::warn!(%provider, %account, "webhook for an account ordersync does not serve; refused");
        return refuse(StatusCode::UNAUTHORIZED, "unknown account");
    };
    let accepted = match hook.receiver.accept(
        &headers,
        &body,
        Utc::now().timestamp(),
        path_token.as_deref(),
    ) {
        Ok(accepted) => accepted,
        Err(Refusal::Unauthenticated(reason)) => {
            count(&provider, &account, "unauthenticated");
            tracing::warn!(%provider, %account, %reason, headers = ?header_names(&headers), "webhook refused: not authenticated");
            return refuse(StatusCode::UNAUTHORIZED, &reason);
        }
        Err(Refusal::Malformed(reason)) => {
            count(&provider, &account, "malformed");
            tracing::warn!(%provider, %account, %reason, "webhook refused: not an event");
            return refuse(StatusCode::BAD_REQUEST, &reason);
        }
    };
    // Read from the database each time (one indexed lookup): a registration made or deleted
    // a moment ago, by this process or another, counts at once.
    if let Some(guid) = &accepted.registration {
        let provider_name = hook.receiver.provider().as_str();
        match state
            .store
            .is_registered(provider_name, &account, guid)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                count(&provider, &account, "unregistered");
                tracing::warn!(%provider, %account, %guid, "webhook refused: it names a webhook ordersync did not register (deleted while in flight, or someone else's pointed here)");
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "the delivery names a webhook ordersync did not register",
                );
            }
            Err(error) => {
                count(&provider, &account, "unavailable");
                tracing::error!(%provider, %account, %error, "cannot check the webhook registration; answered 503 so it is sent again");
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot check the delivery now; retry",
                );
            }
        }
    }
    let delivery = NewDelivery {
        provider: hook.receiver.provider(),
        account: account.clone(),
        source: DeliverySource::Webhook,
        event_id: accepted.event_id,
        event_type: accepted.event_type,
        object_id: accepted.object_id,
        // Verified bytes; a signature over non-UTF-8 would be refused as not JSON already.
        body: String::from_utf8_lossy(&body).into_owned(),
        received_at: Utc::now(),
    };
    let (done, stored) = oneshot::channel();
    if state.writer.send((delivery, done)).await.is_err() {
        count(&provider, &account, "unavailable");
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "shutting down; retry");
    }
    match tokio::time::timeout(STORE_DEADLINE, stored).await {
        Ok(Ok(Ok(new))) => {
            count(
                &provider,
                &account,
                if new { "stored" } else { "duplicate" },
            );
            if new {
                hook.wake.notify_one();
            }
            (
                StatusCode::OK,
                Json(json!({ "stored": true, "duplicate": !new })),
            )
                .into_response()
        }
        Ok(Ok(Err(error))) => {
            count(&provider, &account, "unavailable");
            tracing::error!(%provider, %account, %error, "webhook not stored; answered 503 so it is sent again");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot store the delivery now; retry",
            )
        }
        Ok(Err(_)) | Err(_) => {
            count(&provider, &account, "unavailable");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot store the delivery now; retry",
            )
        }
    }
}

/// One delivery in `ordersync_webhook_deliveries_total`; only for accounts ordersync serves, so
/// probes of made-up accounts cannot grow the label set.
fn count(provider: &str, account: &str, result: &str) {
    crate::metrics::metrics()
        .webhook_deliveries
        .get_or_create(&crate::metrics::outcome(provider, account, result))
        .inc();
}

/// Header names only: values may hold signatures, and names are what tells a wrong setup.
fn header_names(headers: &HeaderMap) -> Vec<&str> {
    headers.keys().map(|k| k.as_str()).collect()
}

fn refuse(status: StatusCode, reason: &str) -> Response {
    (status, Json(json!({ "error": reason }))).into_response()
}

/// Stores what is queued, as many at a time as have arrived, and answers each sender.
async fn store_deliveries(
    mut queue: mpsc::Receiver<(NewDelivery, oneshot::Sender<Result<bool, String>>)>,
    store: Arc<dyn Store>,
) {
    let mut batch = Vec::with_capacity(GROUP_COMMIT_MAX);
    while queue.recv_many(&mut batch, GROUP_COMMIT_MAX).await > 0 {
        let (deliveries, senders): (Vec<NewDelivery>, Vec<_>) = batch.drain(..).unzip();
        match store.record_deliveries(&deliveries, None).await {
            Ok(stored) => {
                for (sender, new) in senders.into_iter().zip(stored) {
                    let _ = sender.send(Ok(new));
                }
            }
            Err(error) => {
                let text = error.to_string();
                for sender in senders {
                    let _ = sender.send(Err(text.clone()));
                }
            }
        }
    }
}
