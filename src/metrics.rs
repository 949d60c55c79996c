//! The process's Prometheus metrics (`GET /metrics`), with the Prometheus project's own client
//! crate: counters are bumped where things happen, the gauges read from the database are set
//! when scraped. Names carry the `ordersync_` prefix and base units.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountLabels {
    pub provider: String,
    pub account: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub provider: String,
    pub account: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub provider: String,
    pub account: String,
    pub stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub provider: String,
    pub account: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

pub struct Metrics {
    registry: Registry,
    pub orders_written: Family<AccountLabels, Counter>,
    pub orders_unchanged: Family<AccountLabels, Counter>,
    pub orders_quarantined: Family<AccountLabels, Counter>,
    /// Outcome: 2xx, 4xx, 429, 5xx, timeout, error (no answer).
    pub upstream_requests: Family<OutcomeLabels, Counter>,
    pub upstream_request_duration: Family<AccountLabels, Histogram>,
    pub rate_gate_pauses: Family<AccountLabels, Counter>,
    /// Outcome: succeeded, sent, failed, unknown, retry, deferred.
    pub action_outcomes: Family<OutcomeLabels, Counter>,
    /// Outcome: stored, duplicate, unauthenticated, malformed, too_large, unavailable.
    pub webhook_deliveries: Family<OutcomeLabels, Counter>,
    pub cursor_lag: Family<StreamLabels, FloatGauge>,
    pub last_success: Family<StreamLabels, FloatGauge>,
    pub actions: Family<StateLabels, Gauge>,
    /// Account leases this replica holds (Postgres, several replicas).
    pub leases_held: Family<ReplicaLabels, Gauge>,
    /// Change: taken, released, lost.
    pub lease_changes: Family<LeaseChangeLabels, Counter>,
    /// Writes refused because this replica no longer held the account's lease.
    pub lease_writes_refused: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabels {
    pub replica: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeaseChangeLabels {
    pub replica: String,
    pub change: String,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let metrics = Metrics {
            orders_written: Family::default(),
            orders_unchanged: Family::default(),
            orders_quarantined: Family::default(),
            upstream_requests: Family::default(),
            upstream_request_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
            rate_gate_pauses: Family::default(),
            action_outcomes: Family::default(),
            webhook_deliveries: Family::default(),
            cursor_lag: Family::default(),
            last_success: Family::default(),
            actions: Family::default(),
            leases_held: Family::default(),
            lease_changes: Family::default(),
            lease_writes_refused: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "ordersync_build",
            "The running version",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            }),
        );
        registry.register(
            "ordersync_orders_written",
            "Orders inserted, or updated because the upstream copy was newer and differed",
            metrics.orders_written.clone(),
        );
        registry.register(
            "ordersync_orders_unchanged",
            "Orders read that were identical to (or older than) the stored copy",
            metrics.orders_unchanged.clone(),
        );
        registry.register(
            "ordersync_orders_quarantined",
            "Upstream records that could not be stored, kept in the quarantine table",
            metrics.orders_quarantined.clone(),
        );
        registry.register(
            "ordersync_upstream_requests",
            "Requests to upstream APIs by outcome: 2xx, 4xx, 429, 5xx, timeout, error",
            metrics.upstream_requests.clone(),
        );
        registry.register_with_unit(
            "ordersync_upstream_request_duration",
            "Time from sending a request to its answer (or failure)",
            Unit::Seconds,
            metrics.upstream_request_duration.clone(),
        );
        registry.register(
            "ordersync_rate_gate_pauses",
            "Pauses of an account's requests asked for by a 429",
            metrics.rate_gate_pauses.clone(),
        );
        registry.register(
            "ordersync_action_outcomes",
            "Attempts at actions by outcome: succeeded, sent, failed, unknown, retry, deferred",
            metrics.action_outcomes.clone(),
        );
        registry.register(
            "ordersync_webhook_deliveries",
            "Webhook deliveries by result: stored, duplicate, unauthenticated, malformed, too_large, unavailable",
            metrics.webhook_deliveries.clone(),
        );
        registry.register_with_unit(
            "ordersync_cursor_lag",
            "How far a stream's cursor is behind now",
            Unit::Seconds,
            metrics.cursor_lag.clone(),
        );
        registry.register_with_unit(
            "ordersync_last_success_timestamp",
            "When a stream's latest successful run finished (Unix time)",
            Unit::Seconds,
            metrics.last_success.clone(),
        );
        registry.register(
            "ordersync_actions",
            "Actions in the queue by state",
            metrics.actions.clone(),
        );
        registry.register(
            "ordersync_leases_held",
            "Account leases this replica holds (several replicas on one Postgres)",
            metrics.leases_held.clone(),
        );
        registry.register(
            "ordersync_lease_changes",
            "Account leases this replica took, released or lost",
            metrics.lease_changes.clone(),
        );
        registry.register(
            "ordersync_lease_writes_refused",
            "Writes refused because this replica no longer held the account's lease (fencing)",
            metrics.lease_writes_refused.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// The Prometheus text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

pub fn account(provider: &str, account: &str) -> AccountLabels {
    AccountLabels {
        provider: provider.to_owned(),
        account: account.to_owned(),
    }
}

pub fn outcome(provider: &str, account: &str, outcome: &str) -> OutcomeLabels {
    OutcomeLabels {
        provider: provider.to_owned(),
        account: account.to_owned(),
        outcome: outcome.to_owned(),
    }
}
