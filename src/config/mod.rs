//! Configuration: one TOML file, `ORDERSYNC_…` environment overrides, secrets from env or files.
//!
//! Loading happens in two steps. Figment + serde read the file into [`RawConfig`] (types and unknown
//! keys are checked there); [`RawConfig::validate`] then parses every value into its typed form and
//! collects *all* problems, each with its key path, so a user fixes a file in one pass.

pub use crate::providers::getitdone::config::{GetItDoneAccount, RawGetItDoneAccount};
pub use crate::providers::graas::config::{GraasAccount, RawGraasAccount};
pub use crate::providers::grafterr::config::{GrafterrAccount, RawGrafterrAccount};
pub use crate::providers::kassaforte::config::{KassaForteShop, RawKassaForteShop};
pub use crate::providers::lagerkoll::config::{LagerkollAccount, RawLagerkollAccount};
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;
use std::collections::HashSet;
use std::fmt;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;
use url::Url;

/// Environment variables starting with this override file keys; `__` separates nesting levels.
pub const ENV_PREFIX: &str = "ORDERSYNC_";

/// A secret value. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The value itself, for the one place that must send it upstream.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A request rate such as `5/s` or `200/m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: NonZeroU32,
    pub per: Duration,
}

impl RateLimit {
    pub fn parse(text: &str) -> Result<Self, String> {
        let help = "write it as COUNT/UNIT, e.g. `5/s`, `300/m` or `1000/h`";
        let (count, unit) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not a rate: {help}"))?;
        let requests: NonZeroU32 = count
            .trim()
            .parse()
            .map_err(|_| format!("`{count}` is not a positive whole number: {help}"))?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => return Err(format!("unknown unit `{other}`: {help}")),
        };
        Ok(RateLimit { requests, per })
    }

    /// The steady gap between two requests at this rate.
    pub fn interval(&self) -> Duration {
        self.per / self.requests.get()
    }

    pub fn per_second(&self) -> f64 {
        f64::from(self.requests.get()) / self.per.as_secs_f64()
    }
}

/// One problem in the configuration, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Everything wrong with a configuration, in file order.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        writeln!(
            f,
            "the configuration has {count} problem{}:",
            if count == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn single(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![ConfigProblem {
                path: path.into(),
                message: message.into(),
            }],
        }
    }

    fn from_figment(error: figment::Error) -> Self {
        let problems = error
            .into_iter()
            .map(|e| {
                let path = if e.path.is_empty() {
                    "(top level)".to_owned()
                } else {
                    e.path.join(".")
                };
                let source = e
                    .metadata
                    .as_ref()
                    .map(|m| format!(" (from {})", m.name))
                    .unwrap_or_default();
                ConfigProblem {
                    path,
                    message: format!("{}{source}", e.kind),
                }
            })
            .collect();
        ConfigError { problems }
    }
}

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub database: RawDatabase,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub outbox: RawOutbox,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub daemon: RawDaemon,
    #[serde(default)]
    pub leases: RawLeases,
    #[serde(default)]
    pub webhooks: RawWebhooks,
    #[serde(default)]
    pub graas: Vec<Entry<RawGraasAccount>>,
    #[serde(default)]
    pub getitdone: Vec<Entry<RawGetItDoneAccount>>,
    #[serde(default)]
    pub kassaforte: Vec<Entry<RawKassaForteShop>>,
    #[serde(default)]
    pub grafterr: Vec<Entry<RawGrafterrAccount>>,
    #[serde(default)]
    pub lagerkoll: Vec<Entry<RawLagerkollAccount>>,
}

/// One `[[section]]` entry as read, with its position in the file for messages.
#[derive(Debug)]
pub struct Entry<R> {
    pub index: usize,
    pub raw: R,
}

impl<'de, R: Deserialize<'de>> Deserialize<'de> for Entry<R> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        R::deserialize(deserializer).map(|raw| Entry { index: 0, raw })
    }
}

/// A provider's list of accounts (`[[graas]]`, `[[getitdone]]`, …): its type lives next to its
/// provider; reading, env overrides, names and key paths are shared here.
pub trait AccountSection: Sized {
    /// The section's name in the file and in `ORDERSYNC_<SECTION>__<n>__<KEY>`.
    const SECTION: &'static str;
    /// The entry as written (serde checks types and unknown keys).
    type Raw: serde::de::DeserializeOwned + fmt::Debug;

    fn name(raw: &Self::Raw) -> &str;

    /// Parses one entry's values; `None` when it is too broken to use (its problems are in `p`).
    fn validate(raw: Self::Raw, at: &KeyPath, p: &mut Problems) -> Option<Self>;
}

/// Where one account's keys live in the file: `graas[1]`.
pub struct KeyPath {
    pub section: &'static str,
    pub index: usize,
}

impl KeyPath {
    /// `graas[1].key`
    pub fn key(&self, key: &str) -> String {
        format!("{}[{}].{key}", self.section, self.index)
    }
}

/// Checks the names of one section's accounts (well-formed, unique), then each account.
fn validate_accounts<T: AccountSection>(entries: Vec<Entry<T::Raw>>, p: &mut Problems) -> Vec<T> {
    let mut names = HashSet::new();
    let mut accounts = Vec::with_capacity(entries.len());
    for Entry { index, raw } in entries {
        let at = KeyPath {
            section: T::SECTION,
            index,
        };
        let name = T::name(&raw).to_owned();
        if !is_valid_name(&name) {
            p.push(
                at.key("name"),
                format!("`{name}` must be 1-64 characters of letters, digits, `-`, `_` or `.`"),
            );
        }
        if !names.insert(name.clone()) {
            p.push(
                at.key("name"),
                format!(
                    "`{name}` is used by another [[{}]] account; names must be unique",
                    T::SECTION
                ),
            );
        }
        accounts.extend(T::validate(raw, &at, p));
    }
    accounts
}

/// `[webhooks]`: the listener that providers push to. It faces the internet, so it is not
/// the admin API's listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhooks {
    #[serde(default = "default_webhooks_listen")]
    pub listen: String,
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    #[serde(default = "default_timestamp_tolerance")]
    pub timestamp_tolerance: String,
}

impl Default for RawWebhooks {
    fn default() -> Self {
        RawWebhooks {
            listen: default_webhooks_listen(),
            max_body_bytes: default_max_body_bytes(),
            timestamp_tolerance: default_timestamp_tolerance(),
        }
    }
}

fn default_webhooks_listen() -> String {
    "127.0.0.1:8322".to_owned()
}
fn default_max_body_bytes() -> usize {
    1024 * 1024
}
fn default_timestamp_tolerance() -> String {
    "300s".to_owned()
}

impl RawWebhooks {
    fn validate(self, p: &mut Problems) -> WebhooksConfig {
        let listen = p.socket_addr("webhooks.listen", &self.listen, "127.0.0.1:8322");
        if !(1_024..=64 * 1024 * 1024).contains(&self.max_body_bytes) {
            p.push(
                "webhooks.max_body_bytes",
                "must be between 1024 and 67108864 (64 MiB)",
            );
        }
        let timestamp_tolerance = p.duration(
            "webhooks.timestamp_tolerance".into(),
            &self.timestamp_tolerance,
        );
        if timestamp_tolerance < Duration::from_secs(1) {
            p.push("webhooks.timestamp_tolerance", "must be at least 1s");
        }
        WebhooksConfig {
            listen,
            max_body_bytes: self.max_body_bytes,
            timestamp_tolerance,
        }
    }
}

#[derive(Debug, Clone)]
pub struct WebhooksConfig {
    pub listen: std::net::SocketAddr,
    /// Larger deliveries are answered 413 and not stored.
    pub max_body_bytes: usize,
    /// How far a signed timestamp may be from our clock, either way.
    pub timestamp_tolerance: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: String,
}

impl Default for RawDaemon {
    fn default() -> Self {
        RawDaemon {
            shutdown_timeout: default_shutdown_timeout(),
        }
    }
}

/// `[leases]`: how replicas on one Postgres share the accounts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLeases {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_lease_ttl")]
    pub ttl: String,
    #[serde(default = "default_lease_renew_every")]
    pub renew_every: String,
}

impl Default for RawLeases {
    fn default() -> Self {
        RawLeases {
            enabled: true,
            ttl: default_lease_ttl(),
            renew_every: default_lease_renew_every(),
        }
    }
}

fn default_lease_ttl() -> String {
    "15s".to_owned()
}

fn default_lease_renew_every() -> String {
    "5s".to_owned()
}

fn default_shutdown_timeout() -> String {
    "30s".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutbox {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_outbox_poll")]
    pub poll_interval: String,
    #[serde(default = "default_visibility_timeout")]
    pub visibility_timeout: String,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: i32,
    #[serde(default = "default_action_min_backoff")]
    pub min_backoff: String,
    #[serde(default = "default_action_max_backoff")]
    pub max_backoff: String,
}

impl Default for RawOutbox {
    fn default() -> Self {
        RawOutbox {
            enabled: true,
            poll_interval: default_outbox_poll(),
            visibility_timeout: default_visibility_timeout(),
            max_attempts: default_max_attempts(),
            min_backoff: default_action_min_backoff(),
            max_backoff: default_action_max_backoff(),
        }
    }
}

pub(crate) fn default_true() -> bool {
    true
}

fn default_outbox_poll() -> String {
    "1s".to_owned()
}
fn default_visibility_timeout() -> String {
    "5m".to_owned()
}
fn default_max_attempts() -> i32 {
    8
}
fn default_action_min_backoff() -> String {
    "5s".to_owned()
}
fn default_action_max_backoff() -> String {
    "10m".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    pub token: Option<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: default_admin_listen(),
            token: None,
        }
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:8321".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    #[serde(default = "default_database_url")]
    pub url: String,
    pub schema: Option<String>,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    #[serde(default = "default_statement_timeout")]
    pub statement_timeout: String,
    #[serde(default = "default_acquire_timeout")]
    pub acquire_timeout: String,
    /// Unset: by backend, see [`DatabaseConfig::buffered_orders`].
    pub buffered_orders: Option<u64>,
}

impl Default for RawDatabase {
    fn default() -> Self {
        RawDatabase {
            url: default_database_url(),
            schema: None,
            max_connections: default_max_connections(),
            statement_timeout: default_statement_timeout(),
            acquire_timeout: default_acquire_timeout(),
            buffered_orders: None,
        }
    }
}

fn default_statement_timeout() -> String {
    "30s".to_owned()
}
fn default_acquire_timeout() -> String {
    "10s".to_owned()
}

fn default_database_url() -> String {
    "sqlite://ordersync.db".to_owned()
}
fn default_max_connections() -> u32 {
    8
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: default_log_level(),
            format: LogFormat::default(),
        }
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    #[serde(default = "default_request_timeout")]
    pub request_timeout: String,
    #[serde(default = "default_max_retries")]
    pub max_retries: usize,
    #[serde(default = "default_min_backoff")]
    pub min_backoff: String,
    #[serde(default = "default_max_backoff")]
    pub max_backoff: String,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            connect_timeout: default_connect_timeout(),
            request_timeout: default_request_timeout(),
            max_retries: default_max_retries(),
            min_backoff: default_min_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

fn default_connect_timeout() -> String {
    "5s".to_owned()
}
fn default_request_timeout() -> String {
    "30s".to_owned()
}
fn default_max_retries() -> usize {
    8
}
fn default_min_backoff() -> String {
    "1s".to_owned()
}
fn default_max_backoff() -> String {
    "60s".to_owned()
}

// ---------------------------------------------------------------------------------------------
// The validated, typed configuration.

#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    pub log: LogConfig,
    pub http: HttpConfig,
    pub outbox: OutboxConfig,
    pub admin: AdminConfig,
    pub daemon: DaemonConfig,
    pub leases: LeaseConfig,
    pub webhooks: WebhooksConfig,
    pub graas: Vec<GraasAccount>,
    pub getitdone: Vec<GetItDoneAccount>,
    pub kassaforte: Vec<KassaForteShop>,
    pub grafterr: Vec<GrafterrAccount>,
    pub lagerkoll: Vec<LagerkollAccount>,
}

/// Account leases (Postgres only: SQLite is one process per database file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    pub enabled: bool,
    /// How long a lease lasts unless renewed: a dead replica's accounts wait this long.
    pub ttl: Duration,
    /// How often the holder renews, spreads the accounts and takes free ones.
    pub renew_every: Duration,
}

impl LeaseConfig {
    /// How long before the database's expiry a replica stops working for an account it could
    /// not renew: room for its work to notice and stop.
    pub fn guard(&self) -> Duration {
        (self.ttl / 5).min(Duration::from_secs(3))
    }

    /// The longest a replica's transaction may sit idle. A replica frozen inside a write
    /// transaction holds its lease row's share lock (the fence) and so blocks any takeover
    /// until the server ends that transaction: it must end within a fraction of the TTL, not
    /// after the database's general call timeout.
    pub fn idle_transaction_limit(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_secs(1))
    }
}

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// How long SIGTERM waits for current transactions and batches before abandoning them.
    pub shutdown_timeout: Duration,
}

impl Config {
    pub fn graas_account(&self, name: &str) -> Option<&GraasAccount> {
        self.graas.iter().find(|a| a.name == name)
    }

    pub fn getitdone_account(&self, name: &str) -> Option<&GetItDoneAccount> {
        self.getitdone.iter().find(|a| a.name == name)
    }

    pub fn kassaforte_shop(&self, name: &str) -> Option<&KassaForteShop> {
        self.kassaforte.iter().find(|a| a.name == name)
    }

    pub fn grafterr_account(&self, name: &str) -> Option<&GrafterrAccount> {
        self.grafterr.iter().find(|a| a.name == name)
    }

    pub fn lagerkoll_account(&self, name: &str) -> Option<&LagerkollAccount> {
        self.lagerkoll.iter().find(|a| a.name == name)
    }
}

#[derive(Debug, Clone)]
pub struct OutboxConfig {
    pub enabled: bool,
    /// How often an idle dispatcher looks for due actions (rows written by SQL or by another
    /// process; the daemon's own API wakes it at once).
    pub poll_interval: Duration,
    /// How long a claim lasts without renewal. The claimer renews it while it works, so this
    /// only decides how soon the actions of a process that died are claimed again.
    pub visibility_timeout: Duration,
    pub max_attempts: i32,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: std::net::SocketAddr,
    /// The bearer token; without one the admin API is not served.
    pub token: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// The connection URL; may hold a password, so it is a secret.
    pub url: Secret,
    pub backend: Backend,
    pub schema: Option<String>,
    pub max_connections: u32,
    /// The longest one statement may run or wait for a lock (Postgres `statement_timeout` and
    /// `lock_timeout`, SQLite's busy timeout).
    pub statement_timeout: Duration,
    /// The longest a caller waits for a connection, reconnecting included.
    pub acquire_timeout: Duration,
    /// The longest Postgres lets a transaction sit idle between statements before it ends the
    /// session and its locks (`idle_in_transaction_session_timeout`): a client that went away
    /// or froze mid-transaction. See [`LeaseConfig::idle_transaction_limit`].
    pub idle_transaction_timeout: Duration,
    /// Fetched orders the process may hold until they are written, over all streams (about
    /// 1.7 KB each with their payload). Larger batches write faster; one backfilling stream may
    /// use it all, several share it.
    pub buffered_orders: usize,
}

/// Every SQLite commit rewrites the unique index's pages its orders touch, so batches as large
/// as memory allows pay off as the database grows (the writer's page cache is small to match).
pub const SQLITE_BUFFERED_ORDERS: usize = 16_000;
/// Postgres writes two batches at once, and larger ones did not write faster.
pub const POSTGRES_BUFFERED_ORDERS: usize = 8_000;
/// Fewer would stall the reading at nearly every page.
const MIN_BUFFERED_ORDERS: u64 = 100;
const MAX_BUFFERED_ORDERS: u64 = 1_000_000;

impl DatabaseConfig {
    /// The longest any one database call may take before ordersync abandons it: a connection,
    /// then a statement, plus a margin so the database's own timeout (a clearer error) fires
    /// first. It also covers a connection that went silent, which no server timeout can.
    pub fn call_timeout(&self) -> Duration {
        self.acquire_timeout + self.statement_timeout + Duration::from_secs(5)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

impl LogConfig {
    /// Used when `level` cannot be read.
    pub const DEFAULT_FILTER: &'static str = "warn,ordersync=info";

    /// The tracing filter for `level`. A bare level is about ordersync: its libraries (the
    /// database pool's reconnect chatter, the HTTP stack) speak at `warn` and above unless the
    /// level is quieter still. A filter with directives (`sqlx=debug,info`) is used as written.
    pub fn filter(&self) -> String {
        let level = self.level.trim();
        match level.to_ascii_lowercase().as_str() {
            "off" | "error" | "warn" => level.to_owned(),
            "info" | "debug" | "trace" => format!("warn,ordersync={level}"),
            _ => level.to_owned(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_retries: usize,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Config {
    /// Reads `path` (when given) and the `ORDERSYNC_…` environment, then validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            if !path.is_file() {
                return Err(ConfigError::single(
                    "(file)",
                    format!(
                        "{} does not exist or is not a file; pass --config with the path of your TOML file (see config.example.toml)",
                        path.display()
                    ),
                ));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        Self::from_figment(figment.merge(overrides()), &account_overrides())
    }

    /// Parses a TOML text (with no environment overrides): for the demo and tests.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(text)), &[])
    }

    /// Reads each section (and each account) on its own, so a wrong type in one does not hide
    /// the problems of the others, then validates the values.
    fn from_figment(
        figment: Figment,
        account_env: &[AccountOverride],
    ) -> Result<Config, ConfigError> {
        /// The top level alone: unknown sections are found here.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Sections {
            database: Option<figment::value::Value>,
            log: Option<figment::value::Value>,
            http: Option<figment::value::Value>,
            outbox: Option<figment::value::Value>,
            admin: Option<figment::value::Value>,
            daemon: Option<figment::value::Value>,
            leases: Option<figment::value::Value>,
            webhooks: Option<figment::value::Value>,
            graas: Option<figment::value::Value>,
            getitdone: Option<figment::value::Value>,
            kassaforte: Option<figment::value::Value>,
            grafterr: Option<figment::value::Value>,
            lagerkoll: Option<figment::value::Value>,
        }
        let mut problems = ConfigError::from_figment_at(&[], figment.extract::<Sections>().err());
        let raw = RawConfig {
            database: extract_section(&figment, "database", &mut problems),
            log: extract_section(&figment, "log", &mut problems),
            http: extract_section(&figment, "http", &mut problems),
            outbox: extract_section(&figment, "outbox", &mut problems),
            admin: extract_section(&figment, "admin", &mut problems),
            daemon: extract_section(&figment, "daemon", &mut problems),
            leases: extract_section(&figment, "leases", &mut problems),
            webhooks: extract_section(&figment, "webhooks", &mut problems),
            graas: extract_accounts::<GraasAccount>(&figment, account_env, &mut problems),
            getitdone: extract_accounts::<GetItDoneAccount>(&figment, account_env, &mut problems),
            kassaforte: extract_accounts::<KassaForteShop>(&figment, account_env, &mut problems),
            grafterr: extract_accounts::<GrafterrAccount>(&figment, account_env, &mut problems),
            lagerkoll: extract_accounts::<LagerkollAccount>(&figment, account_env, &mut problems),
        };
        match raw.validate() {
            Ok(config) if problems.is_empty() => Ok(config),
            Ok(_) => Err(ConfigError { problems }),
            Err(invalid) => {
                problems.extend(invalid.problems);
                Err(ConfigError { problems })
            }
        }
    }
}

/// One section with its defaults when absent; a problem (and the defaults) when it does not read.
fn extract_section<T: serde::de::DeserializeOwned + Default>(
    figment: &Figment,
    name: &str,
    problems: &mut Vec<ConfigProblem>,
) -> T {
    let Ok(value) = figment.find_value(name) else {
        return T::default();
    };
    T::deserialize(&value).unwrap_or_else(|error| {
        problems.extend(ConfigError::from_figment_at(
            &[name.to_owned()],
            Some(error),
        ));
        T::default()
    })
}

/// Each `[[name]]` entry read on its own; entries that do not read are reported and left out,
/// the others keep their position for later messages.
fn extract_accounts<T: AccountSection>(
    figment: &Figment,
    account_env: &[AccountOverride],
    problems: &mut Vec<ConfigProblem>,
) -> Vec<Entry<T::Raw>> {
    let name = T::SECTION;
    let value = figment
        .find_value(name)
        .unwrap_or_else(|_| figment::value::Value::from(Vec::<figment::value::Value>::new()));
    let mut entries = match Vec::<figment::value::Value>::deserialize(&value) {
        Ok(entries) => entries,
        Err(error) => {
            problems.extend(ConfigError::from_figment_at(
                &[name.to_owned()],
                Some(error),
            ));
            return Vec::new();
        }
    };
    for env in account_env.iter().filter(|e| e.section == name) {
        match entries.get_mut(env.index) {
            Some(figment::value::Value::Dict(_, dict)) => {
                dict.insert(env.key.clone(), env.value.clone());
            }
            _ => problems.push(ConfigProblem {
                path: format!("{name}[{}]", env.index),
                message: format!(
                    "{} names an account the file does not have; environment variables change accounts, they do not add them",
                    env.variable
                ),
            }),
        }
    }
    entries
        .into_iter()
        .enumerate()
        .filter_map(|(i, entry)| match T::Raw::deserialize(&entry) {
            Ok(raw) => Some(Entry { index: i, raw }),
            Err(error) => {
                problems.extend(ConfigError::from_figment_at(
                    &[format!("{name}[{i}]")],
                    Some(error),
                ));
                None
            }
        })
        .collect()
}

impl ConfigError {
    /// Turns figment's errors into problems, their paths below `prefix`.
    fn from_figment_at(prefix: &[String], error: Option<figment::Error>) -> Vec<ConfigProblem> {
        let Some(error) = error else {
            return Vec::new();
        };
        let mut problems = ConfigError::from_figment(error).problems;
        if !prefix.is_empty() {
            for problem in &mut problems {
                problem.path = if problem.path == "(top level)" {
                    prefix.join(".")
                } else {
                    format!("{}.{}", prefix.join("."), problem.path)
                };
            }
        }
        problems
    }
}

/// Sections whose entries are a list (`[[graas]]`): their keys are overridden per position.
const LIST_SECTIONS: [&str; 5] = [
    GraasAccount::SECTION,
    GetItDoneAccount::SECTION,
    KassaForteShop::SECTION,
    GrafterrAccount::SECTION,
    LagerkollAccount::SECTION,
];

/// `ORDERSYNC_…` variables as config keys. `ORDERSYNC_CONFIG` (the file's path),
/// `ORDERSYNC_TEST_…` (the test suite's) and `ORDERSYNC_BENCH_…` (the benchmarks') are not keys; any other unknown one is an error, so a
/// misspelt override is reported instead of ignored. Keys of list entries are handled by
/// [`account_overrides`].
fn overrides() -> Env {
    Env::prefixed(ENV_PREFIX)
        .filter(|key| {
            let key = key.as_str().to_ascii_lowercase();
            let list_entry = LIST_SECTIONS
                .iter()
                .any(|section| key.starts_with(&format!("{section}__")));
            key != "config"
                && !key.starts_with("test_")
                && !key.starts_with("bench_")
                && !list_entry
        })
        .split("__")
}

/// `ORDERSYNC_GRAAS__1__APP_KEY=…`: one key of the account at that position in the file.
#[derive(Debug, Clone)]
struct AccountOverride {
    variable: String,
    section: String,
    index: usize,
    key: String,
    value: figment::value::Value,
}

fn account_overrides() -> Vec<AccountOverride> {
    std::env::vars()
        .filter_map(|(variable, value)| {
            let rest = variable.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
            let mut parts = rest.splitn(3, "__");
            let section = parts.next()?;
            if !LIST_SECTIONS.contains(&section) {
                return None;
            }
            let index = parts.next()?.parse().ok();
            let key = parts.next().map(str::to_owned);
            Some(AccountOverride {
                // An unreadable index is reported like a missing account.
                index: index.unwrap_or(usize::MAX),
                key: key.unwrap_or_default(),
                section: section.to_owned(),
                value: value.parse().unwrap_or(figment::value::Value::from(value)),
                variable,
            })
        })
        .collect()
}

/// Collects problems while values are parsed, so one run reports all of them. A value that
/// does not parse is reported and replaced by a harmless one, so parsing goes on.
#[derive(Default)]
pub struct Problems(Vec<ConfigProblem>);

impl Problems {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem {
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn into_problems(self) -> Vec<ConfigProblem> {
        self.0
    }

    pub fn schedule(&mut self, path: String, expr: &str) {
        if let Err(message) = check_schedule(expr) {
            self.push(path, message);
        }
    }

    pub fn rate_limit(&mut self, path: String, text: &str) -> RateLimit {
        RateLimit::parse(text).unwrap_or_else(|message| {
            self.push(path, message);
            RateLimit {
                requests: NonZeroU32::MIN,
                per: Duration::from_secs(1),
            }
        })
    }

    /// An http(s) URL with a host; `None` (and a problem) otherwise.
    pub fn http_url(&mut self, path: String, text: &str, example: &str) -> Option<Url> {
        match Url::parse(text.trim()) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Some(url),
            Ok(_) | Err(_) => {
                self.push(
                    path,
                    format!("`{text}` is not an http(s) URL; write e.g. `{example}`"),
                );
                None
            }
        }
    }

    pub fn socket_addr(&mut self, path: &str, text: &str, example: &str) -> std::net::SocketAddr {
        text.trim().parse().unwrap_or_else(|_| {
            self.push(
                path,
                format!("`{text}` is not an address; write IP:PORT, e.g. `{example}`"),
            );
            std::net::SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    pub fn duration(&mut self, path: String, text: &str) -> Duration {
        humantime::parse_duration(text.trim()).unwrap_or_else(|e| {
            self.push(
                path,
                format!("`{text}` is not a duration ({e}); write e.g. `30s`, `10m`, `1d`"),
            );
            Duration::ZERO
        })
    }

    pub fn secret(&mut self, path: String, text: &str) -> Secret {
        match resolve_secret(text) {
            Ok(secret) => secret,
            Err(message) => {
                self.push(path, message);
                Secret::new(String::new())
            }
        }
    }
}

/// Resolves `env:NAME`, `file:/path` or a literal value.
pub fn resolve_secret(text: &str) -> Result<Secret, String> {
    if let Some(name) = text.strip_prefix("env:") {
        return match std::env::var(name) {
            Ok(value) if !value.is_empty() => Ok(Secret::new(value)),
            Ok(_) => Err(format!(
                "environment variable {name} is empty; set it to the secret"
            )),
            Err(_) => Err(format!(
                "environment variable {name} is not set; export it or use `file:/path` instead"
            )),
        };
    }
    if let Some(path) = text.strip_prefix("file:") {
        return match std::fs::read_to_string(path) {
            // Mounted secret files usually end with a newline that is not part of the secret.
            Ok(value) if !value.trim_end_matches(['\r', '\n']).is_empty() => {
                Ok(Secret::new(value.trim_end_matches(['\r', '\n'])))
            }
            Ok(_) => Err(format!("secret file {path} is empty")),
            Err(e) => Err(format!("cannot read secret file {path}: {e}")),
        };
    }
    if text.is_empty() {
        return Err("is empty; give the value, `env:NAME` or `file:/path`".to_owned());
    }
    Ok(Secret::new(text))
}

/// Checks a cron expression the way the scheduler will parse it (six fields, seconds first).
pub fn check_schedule(expr: &str) -> Result<(), String> {
    tokio_cron_scheduler::Job::new_async(expr, |_, _| Box::pin(async {}))
        .map(|_| ())
        .map_err(|e| {
            format!(
                "`{expr}` is not a cron expression ({e:?}); use six fields with seconds first, e.g. `*/30 * * * * *`"
            )
        })
}

pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl RawConfig {
    pub fn validate(self) -> Result<Config, ConfigError> {
        let mut p = Problems::default();

        let mut database = {
            let url = self.database.url.trim().to_owned();
            let backend = if url.starts_with("sqlite:") {
                Backend::Sqlite
            } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                Backend::Postgres
            } else {
                p.push(
                    "database.url",
                    "must start with `sqlite:` (e.g. `sqlite://ordersync.db`) or `postgres://`",
                );
                Backend::Sqlite
            };
            if backend == Backend::Postgres && Url::parse(&url).is_err() {
                p.push(
                    "database.url",
                    "is not a valid URL; write postgres://USER[:PASSWORD]@HOST:PORT/DATABASE",
                );
            }
            if let Some(schema) = &self.database.schema {
                if backend == Backend::Sqlite {
                    p.push(
                        "database.schema",
                        "applies to Postgres only; remove it for SQLite",
                    );
                } else if !is_valid_name(schema) || schema.contains(['-', '.']) {
                    p.push(
                        "database.schema",
                        format!("`{schema}` must be letters, digits and `_` only"),
                    );
                }
            }
            if self.database.max_connections == 0 {
                p.push("database.max_connections", "must be at least 1");
            }
            let statement_timeout = p.duration(
                "database.statement_timeout".into(),
                &self.database.statement_timeout,
            );
            if statement_timeout < Duration::from_secs(1) {
                p.push("database.statement_timeout", "must be at least 1s");
            }
            let acquire_timeout = p.duration(
                "database.acquire_timeout".into(),
                &self.database.acquire_timeout,
            );
            if acquire_timeout < Duration::from_secs(1) {
                p.push("database.acquire_timeout", "must be at least 1s");
            }
            let buffered_orders = match self.database.buffered_orders {
                None => match backend {
                    Backend::Sqlite => SQLITE_BUFFERED_ORDERS,
                    Backend::Postgres => POSTGRES_BUFFERED_ORDERS,
                },
                Some(orders) if (MIN_BUFFERED_ORDERS..=MAX_BUFFERED_ORDERS).contains(&orders) => {
                    orders as usize
                }
                Some(orders) => {
                    p.push(
                        "database.buffered_orders",
                        format!(
                            "{orders} is out of range: give {MIN_BUFFERED_ORDERS} to \
                             {MAX_BUFFERED_ORDERS} orders (about 1.7 KB of memory each), or \
                             remove it for the default"
                        ),
                    );
                    POSTGRES_BUFFERED_ORDERS
                }
            };
            let mut database = DatabaseConfig {
                url: Secret::new(url),
                backend,
                schema: self.database.schema,
                max_connections: self.database.max_connections.max(1),
                statement_timeout,
                acquire_timeout,
                idle_transaction_timeout: Duration::MAX,
                buffered_orders,
            };
            // No request is ever made inside a transaction: one idle past a whole database call
            // belongs to a client that went away.
            database.idle_transaction_timeout = database.call_timeout();
            database
        };

        let daemon = DaemonConfig {
            shutdown_timeout: p.duration(
                "daemon.shutdown_timeout".into(),
                &self.daemon.shutdown_timeout,
            ),
        };
        if daemon.shutdown_timeout < Duration::from_secs(1) {
            p.push(
                "daemon.shutdown_timeout",
                "must be at least 1s; keep it below systemd's TimeoutStopSec and the pod's terminationGracePeriodSeconds",
            );
        }

        let leases = LeaseConfig {
            enabled: self.leases.enabled,
            ttl: p.duration("leases.ttl".into(), &self.leases.ttl),
            renew_every: p.duration("leases.renew_every".into(), &self.leases.renew_every),
        };
        if leases.enabled && database.backend == Backend::Postgres {
            database.idle_transaction_timeout = database
                .idle_transaction_timeout
                .min(leases.idle_transaction_limit());
        }
        if leases.ttl < Duration::from_secs(2) {
            p.push(
                "leases.ttl",
                "must be at least 2s: a replica renews well inside it, over the network",
            );
        } else if leases.renew_every.is_zero() || leases.renew_every * 2 > leases.ttl {
            p.push(
                "leases.renew_every",
                format!(
                    "must be longer than zero and at most half of leases.ttl ({}), so a late renewal still lands in time",
                    humantime::format_duration(leases.ttl)
                ),
            );
        }

        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            p.push(
                "log.level",
                format!(
                    "`{}` is not a log filter; use error, warn, info, debug or e.g. `ordersync=debug`",
                    self.log.level
                ),
            );
        }
        let log = LogConfig {
            level: self.log.level,
            format: self.log.format,
        };

        let http = HttpConfig {
            connect_timeout: p.duration("http.connect_timeout".into(), &self.http.connect_timeout),
            request_timeout: p.duration("http.request_timeout".into(), &self.http.request_timeout),
            max_retries: self.http.max_retries,
            min_backoff: p.duration("http.min_backoff".into(), &self.http.min_backoff),
            max_backoff: p.duration("http.max_backoff".into(), &self.http.max_backoff),
        };
        if http.request_timeout.is_zero() {
            p.push("http.request_timeout", "must be longer than zero");
        }
        if http.max_backoff < http.min_backoff {
            p.push(
                "http.max_backoff",
                "must not be shorter than http.min_backoff",
            );
        }

        let outbox = OutboxConfig {
            enabled: self.outbox.enabled,
            poll_interval: p.duration("outbox.poll_interval".into(), &self.outbox.poll_interval),
            visibility_timeout: p.duration(
                "outbox.visibility_timeout".into(),
                &self.outbox.visibility_timeout,
            ),
            max_attempts: self.outbox.max_attempts,
            min_backoff: p.duration("outbox.min_backoff".into(), &self.outbox.min_backoff),
            max_backoff: p.duration("outbox.max_backoff".into(), &self.outbox.max_backoff),
        };
        if outbox.poll_interval < Duration::from_millis(10) {
            p.push("outbox.poll_interval", "must be at least 10ms");
        }
        if outbox.visibility_timeout < Duration::from_secs(1) {
            p.push("outbox.visibility_timeout", "must be at least 1s");
        }
        if outbox.max_attempts < 1 {
            p.push("outbox.max_attempts", "must be at least 1");
        }
        if outbox.max_backoff < outbox.min_backoff {
            p.push(
                "outbox.max_backoff",
                "must not be shorter than outbox.min_backoff",
            );
        }

        let admin = AdminConfig {
            listen: p.socket_addr("admin.listen", &self.admin.listen, "127.0.0.1:8321"),
            token: self.admin.token.as_deref().map(|text| {
                let token = p.secret("admin.token".into(), text);
                if !token.expose().is_empty() && token.expose().len() < 16 {
                    p.push(
                        "admin.token",
                        "is shorter than 16 characters; use a long random value (e.g. `openssl rand -hex 32`)",
                    );
                }
                token
            }),
        };

        let graas = validate_accounts(self.graas, &mut p);
        let getitdone = validate_accounts(self.getitdone, &mut p);
        let kassaforte = validate_accounts(self.kassaforte, &mut p);
        let grafterr = validate_accounts(self.grafterr, &mut p);
        let lagerkoll = validate_accounts(self.lagerkoll, &mut p);
        let webhooks = self.webhooks.validate(&mut p);

        if p.0.is_empty() {
            Ok(Config {
                database,
                log,
                http,
                outbox,
                admin,
                daemon,
                leases,
                webhooks,
                graas,
                getitdone,
                kassaforte,
                grafterr,
                lagerkoll,
            })
        } else {
            Err(ConfigError { problems: p.0 })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [[graas]]
        name = "sg-shop"
        base_url = "http://127.0.0.1:9"
        account_number = "5a4e44b3a67a6d000489e5a8"
        app_key = "literal-key"
        start_from = "2024-01-01T00:00:00Z"
    "#;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let config = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(config.database.backend, Backend::Sqlite);
        let account = &config.graas[0];
        assert_eq!(account.lookback, Duration::from_secs(600));
        assert_eq!(account.settle, Duration::from_secs(30));
        assert_eq!(account.page_size, 100);
        assert_eq!(account.rate_limit.per_second(), 5.0);
        assert_eq!(config.daemon.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(config.database.statement_timeout, Duration::from_secs(30));
        assert_eq!(config.database.acquire_timeout, Duration::from_secs(10));
        assert_eq!(config.database.call_timeout(), Duration::from_secs(45));
    }

    #[test]
    fn the_order_buffer_is_sized_by_backend_unless_given() {
        let sqlite = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(sqlite.database.buffered_orders, SQLITE_BUFFERED_ORDERS);
        let postgres = format!("[database]\nurl = \"postgres://u@localhost/db\"\n{MINIMAL}");
        let postgres = Config::from_toml(&postgres).unwrap();
        assert_eq!(postgres.database.buffered_orders, POSTGRES_BUFFERED_ORDERS);
        let given = format!("[database]\nbuffered_orders = 3000\n{MINIMAL}");
        assert_eq!(
            Config::from_toml(&given).unwrap().database.buffered_orders,
            3_000
        );
        for wrong in ["0", "99", "1000001"] {
            let text = format!("[database]\nbuffered_orders = {wrong}\n{MINIMAL}");
            let err = Config::from_toml(&text).unwrap_err();
            let problem = err
                .problems
                .iter()
                .find(|p| p.path == "database.buffered_orders")
                .unwrap_or_else(|| panic!("{wrong}: {err}"));
            assert!(problem.to_string().contains("100 to 1000000"), "{problem}");
        }
        let negative = format!("[database]\nbuffered_orders = -5\n{MINIMAL}");
        let err = Config::from_toml(&negative).unwrap_err();
        assert!(err.to_string().contains("buffered_orders"), "{err}");
    }

    #[test]
    fn a_replicas_open_transactions_end_well_inside_its_lease() {
        let config = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(
            config.database.idle_transaction_timeout,
            config.database.call_timeout()
        );
        let postgres = format!(
            "[database]\nurl = \"postgres://u@127.0.0.1/db\"\n[leases]\nttl = \"15s\"\n{MINIMAL}"
        );
        let config = Config::from_toml(&postgres).unwrap();
        assert_eq!(
            config.database.idle_transaction_timeout,
            Duration::from_secs(5)
        );
        let off = postgres.replace("[leases]\n", "[leases]\nenabled = false\n");
        let config = Config::from_toml(&off).unwrap();
        assert_eq!(
            config.database.idle_transaction_timeout,
            config.database.call_timeout()
        );
    }

    #[test]
    fn timeouts_are_checked_with_their_key_paths() {
        let text = format!(
            "[database]\nstatement_timeout = \"soon\"\nacquire_timeout = \"0s\"\n[daemon]\nshutdown_timeout = \"100ms\"\n{MINIMAL}"
        );
        let err = Config::from_toml(&text).unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "database.statement_timeout",
            "database.acquire_timeout",
            "daemon.shutdown_timeout",
        ] {
            assert!(paths.contains(&expected), "{expected} missing in {paths:?}");
        }
        let unknown = format!("[daemon]\nshutdown_timout = \"5s\"\n{MINIMAL}");
        let err = Config::from_toml(&unknown).unwrap_err();
        assert!(err.to_string().contains("shutdown_timout"), "{err}");
    }

    #[test]
    fn a_bare_log_level_is_about_ordersync_not_its_libraries() {
        let filter = |level: &str| {
            LogConfig {
                level: level.into(),
                format: LogFormat::Text,
            }
            .filter()
        };
        assert_eq!(filter("info"), "warn,ordersync=info");
        assert_eq!(filter("debug"), "warn,ordersync=debug");
        assert_eq!(filter("warn"), "warn");
        assert_eq!(filter("info,sqlx=debug"), "info,sqlx=debug");
    }

    #[test]
    fn every_problem_is_reported_with_its_key_path() {
        let text = r#"
            [database]
            url = "mysql://nope"
            [[graas]]
            name = "sg shop"
            base_url = "not a url"
            account_number = "x"
            app_key = "env:ORDERSYNC_TEST_SURELY_UNSET_VAR"
            start_from = "yesterday"
            schedule = "every minute"
            lookback = "ten minutes"
            rate_limit = "5 per second"
            pages_per_read = 0
            read_ahead = 17
        "#;
        let err = Config::from_toml(text).unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "database.url",
            "graas[0].name",
            "graas[0].base_url",
            "graas[0].app_key",
            "graas[0].start_from",
            "graas[0].schedule",
            "graas[0].lookback",
            "graas[0].rate_limit",
            "graas[0].pages_per_read",
            "graas[0].read_ahead",
        ] {
            assert!(paths.contains(&expected), "{expected} missing in {paths:?}");
        }
    }

    #[test]
    fn wrong_types_in_several_places_are_all_reported() {
        let text = r#"
            [database]
            max_connections = "many"
            [http]
            max_retries = "lots"
            [[graas]]
            name = "a"
            base_url = "http://127.0.0.1:9"
            account_number = "1"
            app_key = "k"
            start_from = "2024-01-01T00:00:00Z"
            page_size = "ten"
            [[graas]]
            name = "b"
            base_url = "y"
            account_number = "1"
            app_key = "k"
            start_from = "2024-01-01T00:00:00Z"
        "#;
        let err = Config::from_toml(text).unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "database.max_connections",
                "http.max_retries",
                "graas[0].page_size",
                "graas[1].base_url"
            ]
        );
    }

    #[test]
    fn unknown_key_is_an_error() {
        let err = Config::from_toml(&format!("{MINIMAL}\npage_sise = 10\n")).unwrap_err();
        assert!(err.to_string().contains("page_sise"), "{err}");
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let config = Config::from_toml(MINIMAL).unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("literal-key"));
        assert!(shown.contains("[redacted]"));
    }

    #[test]
    fn secret_from_file_drops_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "s3cret\n").unwrap();
        let secret = resolve_secret(&format!("file:{}", path.display())).unwrap();
        assert_eq!(secret.expose(), "s3cret");
    }

    #[test]
    fn rate_limits_parse() {
        assert_eq!(RateLimit::parse("300/m").unwrap().per_second(), 5.0);
        assert!(RateLimit::parse("0/s").is_err());
        assert!(RateLimit::parse("5/fortnight").is_err());
    }

    #[test]
    fn outbox_and_admin_are_checked_with_their_key_paths() {
        let config = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(config.outbox.max_attempts, 8);
        assert_eq!(config.outbox.visibility_timeout, Duration::from_secs(300));
        assert!(config.admin.token.is_none());
        assert_eq!(config.graas[0].action_batch_size, 50);
        assert_eq!(config.graas[0].cancel_reasons, ["OUT_OF_STOCK"]);

        let text = format!(
            "{MINIMAL}\naction_batch_size = 0\nasn_schedule = \"hourly\"\n\n[outbox]\nmax_attempts = 0\nvisibility_timeout = \"soon\"\n\n[admin]\nlisten = \"localhost\"\ntoken = \"short\"\n"
        );
        let err = Config::from_toml(&text).unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "graas[0].action_batch_size",
            "graas[0].asn_schedule",
            "outbox.max_attempts",
            "outbox.visibility_timeout",
            "admin.listen",
            "admin.token",
        ] {
            assert!(paths.contains(&expected), "{expected} not in {paths:?}");
        }
        assert!(
            !err.to_string().contains("short\""),
            "the token is not echoed"
        );
        let unknown =
            Config::from_toml(&format!("{MINIMAL}\n[outbox]\nretries = 3\n")).unwrap_err();
        assert!(unknown.to_string().contains("retries"), "{unknown}");
    }

    const GID: &str = r#"
        [[getitdone]]
        name = "gid-main"
        client_id = "client"
        client_secret = "literal-secret"
        webhook_secrets = ["hook-secret"]
    "#;

    #[test]
    fn getitdone_gets_documented_defaults() {
        let config = Config::from_toml(GID).unwrap();
        let account = &config.getitdone[0];
        assert_eq!(account.base_url.as_str(), "https://api.getitdone.rocks/");
        assert_eq!(account.api_version, "1.1.0");
        assert_eq!(account.debounce, Duration::from_secs(2));
        assert_eq!(account.rate_limit.per_second(), 10.0);
        assert_eq!(account.repoll_schedule, "0 */15 * * * *");
        assert_eq!(account.confirm_timeout, Duration::from_secs(600));
        assert_eq!(account.api.commands_path, "/v3/commands");
        assert_eq!(config.webhooks.listen.to_string(), "127.0.0.1:8322");
        assert_eq!(config.webhooks.max_body_bytes, 1024 * 1024);
        let shown = format!("{config:?}");
        assert!(!shown.contains("literal-secret") && !shown.contains("hook-secret"));
    }

    #[test]
    fn kassaforte_shops_get_defaults_and_their_problems_key_paths() {
        let config = Config::from_toml(
            r#"
            [[kassaforte]]
            name = "pizza"
            username = "u"
            password = "p:#!"
            "#,
        )
        .unwrap();
        let shop = &config.kassaforte[0];
        assert_eq!(
            shop.base_url.as_str(),
            "https://webservices-api.kassaforte-systems.com/"
        );
        assert_eq!(shop.time_zone, chrono_tz::Europe::Berlin);
        // Ticks spread by the shop's name, evenly spaced.
        assert!(
            shop.infos_schedule().ends_with(" 0/1 * * * *"),
            "{}",
            shop.infos_schedule()
        );
        assert!(
            shop.follow_schedule().ends_with("/30 * * * * *"),
            "{}",
            shop.follow_schedule()
        );
        assert_eq!(shop.password.expose(), "p:#!");
        let text = r#"
            [[kassaforte]]
            name = "pizza"
            base_url = "http://webservices-api.kassaforte-systems.com"
            username = ""
            password = "env:ORDERSYNC_TEST_UNSET_KF_PASSWORD"
            time_zone = "Mars/Olympus"
            holidays = ["2026-12-25", "Christmas"]
            infos_every_open = "7m"
            infos_every_closed = "1m"
            currency = "euro"
            till_offline = "maybe"
        "#;
        let err = Config::from_toml(text).unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"kassaforte[0].till_offline"), "{paths:?}");
        let text = text.replace("till_offline = \"maybe\"", "");
        let err = Config::from_toml(&text).unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "kassaforte[0].base_url",
            "kassaforte[0].username",
            "kassaforte[0].password",
            "kassaforte[0].time_zone",
            "kassaforte[0].holidays[1]",
            "kassaforte[0].infos_every_open",
            "kassaforte[0].infos_every_closed",
            "kassaforte[0].currency",
        ] {
            assert!(paths.contains(&expected), "{expected} missing in {paths:?}");
        }
    }

    #[test]
    fn getitdone_problems_are_reported_with_their_key_paths() {
        let text = r#"
            [webhooks]
            listen = "everywhere"
            [[getitdone]]
            name = "gid main"
            base_url = "ftp://x"
            client_id = ""
            client_secret = "s"
            webhook_secrets = []
            api_version = "2.0.0"
            discovery = "webhook"
            debounce = "soon"
            confirm_timeout = "2d"
            [getitdone.api]
            order_poll_path = "/v3/poll/{orderId}"
            [[getitdone]]
            name = "b"
            client_id = "c"
            client_secret = "s"
            webhook_secrets = ["a", "b", "c"]
            discovery = "stream"
        "#;
        let err = Config::from_toml(text).unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "webhooks.listen",
            "getitdone[0].name",
            "getitdone[0].base_url",
            "getitdone[0].client_id",
            "getitdone[0].webhook_secrets",
            "getitdone[0].api_version",
            "getitdone[0].debounce",
            "getitdone[0].confirm_timeout",
            "getitdone[0].api.order_poll_path",
            "getitdone[1].discovery",
        ] {
            assert!(paths.contains(&expected), "{expected} missing in {paths:?}");
        }
    }
}
