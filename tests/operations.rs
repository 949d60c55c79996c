//! Operating the real binary: `/healthz`, `/readyz` and `/metrics` on the internal listener,
//! the systemd notify protocol against a fake `NOTIFY_SOCKET`, and logs without escape codes.

mod common;

use common::{AccountToml, Setup, TestDb, open_store, wait_for_log, wait_until};
use ordersync::sandbox::{Faults, SandboxConfig};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The config with the internal listener on `port`.
fn on_port(text: String, port: u16) -> String {
    text.replacen(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        &format!("[admin]\nlisten = \"127.0.0.1:{port}\""),
        1,
    )
}

async fn get(port: u16, path: &str) -> (u16, String) {
    match reqwest::get(format!("http://127.0.0.1:{port}{path}")).await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
        Err(error) => (0, error.to_string()),
    }
}

/// Every sample of the Prometheus text, by metric name.
fn scrape(text: &str) -> HashMap<String, Vec<prometheus_parse::Sample>> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("/metrics is Prometheus text");
    let mut by_name: HashMap<String, Vec<prometheus_parse::Sample>> = HashMap::new();
    for sample in parsed.samples {
        by_name
            .entry(sample.metric.clone())
            .or_default()
            .push(sample);
    }
    by_name
}

fn value(sample: &prometheus_parse::Sample) -> f64 {
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        _ => f64::NAN,
    }
}

/// The sum of a metric's samples whose labels include `labels`.
fn sum(
    metrics: &HashMap<String, Vec<prometheus_parse::Sample>>,
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    metrics
        .get(name)
        .into_iter()
        .flatten()
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(value)
        .sum()
}

async fn probes_and_metrics_tell_what_happened(db: TestDb) {
    let mut spec = SandboxConfig::graas(1, 300);
    // The account asks faster than the sandbox allows: some requests get 429.
    spec.faults = Faults {
        rate_limit_per_sec: Some(8),
        retry_after_secs: 1,
        ..Faults::default()
    };
    let port = common::fixed_port();
    let account = AccountToml {
        rate_limit: "20/s",
        page_size: 20,
        ..AccountToml::default()
    };
    let s = Setup::start(&db, spec, &account, |text| on_port(text, port)).await;
    let store = open_store(&s.config).await;
    common::enqueue_accepts(&s, &store, 5).await;
    let _daemon = common::spawn_run_logged(&s.config_path, &s.log());
    wait_for_log(&s.log(), "internal listener up", Duration::from_secs(30)).await;
    wait_until(
        Duration::from_secs(90),
        "orders synced and actions done",
        || {
            let store = store.clone();
            async move {
                let orders = store
                    .orders_of("graas", "shop-1")
                    .await
                    .unwrap_or_default()
                    .len();
                let counts = store.action_counts().await.unwrap_or_default();
                orders == 300 && counts.iter().all(|c| c.state == "succeeded")
            }
        },
    )
    .await;
    assert_eq!(get(port, "/healthz").await.0, 200);
    let (status, body) = get(port, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, r#"{"ready":true}"#));

    let number = &s.spec.graas[0].account_number;
    let before = s.sandbox.graas().stats(number).expect("stats");
    let (status, text) = get(port, "/metrics").await;
    let after = s.sandbox.graas().stats(number).expect("stats");
    assert_eq!(status, 200);
    let metrics = scrape(&text);
    let account = [("provider", "graas"), ("account", "shop-1")];
    let requests = sum(&metrics, "ordersync_upstream_requests_total", &account);
    assert!(
        (before.traffic.requests as f64..=after.traffic.requests as f64).contains(&requests),
        "{requests} requests counted, the sandbox saw {}..{}",
        before.traffic.requests,
        after.traffic.requests
    );
    let limited = sum(
        &metrics,
        "ordersync_upstream_requests_total",
        &[
            ("provider", "graas"),
            ("account", "shop-1"),
            ("outcome", "429"),
        ],
    );
    assert!(limited > 0.0, "the sandbox's 429s are counted");
    assert!(
        (before.traffic.over_limit as f64..=after.traffic.over_limit as f64).contains(&limited),
        "{limited} 429s counted, the sandbox sent {}..{}",
        before.traffic.over_limit,
        after.traffic.over_limit
    );
    assert_eq!(
        sum(&metrics, "ordersync_rate_gate_pauses_total", &account),
        limited
    );
    assert_eq!(
        sum(&metrics, "ordersync_orders_written_total", &account),
        300.0
    );
    let succeeded = [
        ("provider", "graas"),
        ("account", "shop-1"),
        ("state", "succeeded"),
    ];
    assert_eq!(sum(&metrics, "ordersync_actions", &succeeded), 5.0);
    assert_eq!(
        sum(
            &metrics,
            "ordersync_action_outcomes_total",
            &[("account", "shop-1"), ("outcome", "succeeded")]
        ),
        5.0
    );
    assert!(sum(&metrics, "ordersync_cursor_lag_seconds", &account) >= 0.0);
    assert!(
        sum(
            &metrics,
            "ordersync_last_success_timestamp_seconds",
            &account
        ) > 1.7e9
    );
    assert!(metrics.contains_key("ordersync_build_info"), "{text}");
    assert!(
        metrics.contains_key("ordersync_upstream_request_duration_seconds_count")
            || text.contains("ordersync_upstream_request_duration_seconds_bucket")
    );

    // Every upstream request failing does not make the process unhealthy.
    s.sandbox.graas().set_faults(Faults {
        server_error_ratio: 1.0,
        ..Faults::default()
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(get(port, "/healthz").await.0, 200);
    let text = get(port, "/metrics").await.1;
    assert!(
        sum(
            &scrape(&text),
            "ordersync_upstream_requests_total",
            &[("account", "shop-1"), ("outcome", "5xx")]
        ) > 0.0
    );

    // Logs to a file carry no colour codes.
    let log = std::fs::read_to_string(s.log()).expect("log");
    assert!(!log.contains('\u{1b}'), "escape codes in the log");
    assert!(
        !log.contains("catch-up"),
        "a progress display outside a terminal"
    );
    store.close().await;
    s.sandbox.stop().await;
}
on_both_backends!(probes_and_metrics_tell_what_happened);

/// `/readyz` says 503 with the reason while the database does not answer, 200 once it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(ordersync_pg), ignore = "needs Postgres: set ORDERSYNC_TEST_PG")]
async fn readiness_follows_the_database() {
    let direct = TestDb::new(common::Backend::Postgres, "readiness");
    let server = url::Url::parse(&direct.url).expect("url");
    let upstream = tokio::net::lookup_host((
        server.host_str().unwrap_or("127.0.0.1"),
        server.port().unwrap_or(5432),
    ))
    .await
    .expect("address")
    .next()
    .expect("an address");
    let proxy = common::PausableProxy::start(upstream).await;
    let db = direct.through(&proxy);
    let port = common::fixed_port();
    let spec = SandboxConfig::graas(1, 20);
    let s = Setup::start(&db, spec, &AccountToml::default(), |text| {
        common::with_database_timeouts(&on_port(text, port), "1s", "1s")
    })
    .await;
    let _daemon = common::spawn_run_logged(&s.config_path, &s.log());
    // The listener is up before the scheduler has beaten (Postgres leases come first); the
    // database goes away only once the daemon runs, or `/healthz` still says it never ticked.
    wait_for_log(&s.log(), "ordersync running", Duration::from_secs(30)).await;
    assert_eq!(get(port, "/readyz").await.0, 200);
    proxy.pause();
    let started = Instant::now();
    let (status, body) = get(port, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("\"ready\":false") && body.contains("database"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "answered in {:?}",
        started.elapsed()
    );
    assert_eq!(
        get(port, "/healthz").await.0,
        200,
        "the database is not liveness"
    );
    proxy.resume();
    wait_until(Duration::from_secs(30), "ready again", || async move {
        get(port, "/readyz").await.0 == 200
    })
    .await;
    s.sandbox.stop().await;
}

/// Reads datagrams from the fake notify socket until `until` says stop or `limit` passes.
fn collect(
    socket: &std::os::unix::net::UnixDatagram,
    limit: Duration,
    mut until: impl FnMut(&str) -> bool,
) -> Vec<(Instant, String)> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        let _ = socket.set_read_timeout(Some(Duration::from_millis(100)));
        if let Ok(n) = socket.recv(&mut buffer) {
            let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
            let stop = until(&text);
            got.push((Instant::now(), text));
            if stop {
                break;
            }
        }
    }
    got
}

fn spawn_notified(s: &Setup, socket: &std::path::Path, stall_after: Option<u32>) -> common::Daemon {
    let file = std::fs::File::create(s.log()).expect("log file");
    // systemd names the process the watchdog is for; `exec` keeps the shell's pid.
    let mut command = std::process::Command::new("sh");
    command
        .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" run --config \"$1\""])
        .arg(env!("CARGO_BIN_EXE_ordersync"))
        .arg(&s.config_path)
        .env_remove("ORDERSYNC_CONFIG")
        .env("NOTIFY_SOCKET", socket)
        .env("WATCHDOG_USEC", "3000000")
        .stdout(std::process::Stdio::null())
        .stderr(file);
    if let Some(after) = stall_after {
        command.env("ORDERSYNC_TEST_STALL_HEARTBEAT_AFTER", after.to_string());
    }
    common::Daemon(command.spawn().expect("spawn ordersync run"), Some(s.log()))
}

async fn systemd_hears_ready_watchdog_and_stopping(db: TestDb) {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("notify socket");
    let port = common::fixed_port();
    let s = Setup::start(
        &db,
        SandboxConfig::graas(1, 20),
        &AccountToml::default(),
        |text| on_port(text, port),
    )
    .await;

    let mut daemon = spawn_notified(&s, &path, None);
    let ready = collect(&socket, Duration::from_secs(30), |m| m.contains("READY=1"));
    assert!(
        ready.iter().any(|(_, m)| m.contains("READY=1")),
        "{ready:?}"
    );
    // The migrations are applied by then.
    assert_eq!(get(port, "/readyz").await.0, 200);
    // WATCHDOG_USEC = 3 s: a ping every second, from the scheduler.
    let pings = collect(&socket, Duration::from_secs(4), |_| false);
    let watchdog = pings
        .iter()
        .filter(|(_, m)| m.contains("WATCHDOG=1"))
        .count();
    assert!(
        (3..=5).contains(&watchdog),
        "{watchdog} pings in 4 s: {pings:?}"
    );
    std::process::Command::new("kill")
        .args(["-TERM", &daemon.pid().to_string()])
        .status()
        .expect("kill -TERM");
    let stopping = collect(&socket, Duration::from_secs(15), |m| {
        m.contains("STOPPING=1")
    });
    assert!(
        stopping.iter().any(|(_, m)| m.contains("STOPPING=1")),
        "{stopping:?}"
    );
    let _ = daemon.0.wait();

    // A scheduler that stops firing stops the pings, and /healthz says so.
    let _stalled = spawn_notified(&s, &path, Some(2));
    let ready = collect(&socket, Duration::from_secs(30), |m| m.contains("READY=1"));
    assert!(
        ready.iter().any(|(_, m)| m.contains("READY=1")),
        "{ready:?}"
    );
    let pings = collect(&socket, Duration::from_secs(7), |_| false);
    let watchdog = pings
        .iter()
        .filter(|(_, m)| m.contains("WATCHDOG=1"))
        .count();
    assert!(
        watchdog <= 2,
        "{watchdog} pings from a stalled scheduler: {pings:?}"
    );
    // Dead once three beats and two seconds have passed since the last one.
    wait_until(Duration::from_secs(15), "/healthz to fail", || async move {
        get(port, "/healthz").await.0 == 503
    })
    .await;
    let (status, body) = get(port, "/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("has not ticked"), "{body}");
    s.sandbox.stop().await;
}
on_both_backends!(systemd_hears_ready_watchdog_and_stopping);

/// `format = "json"`: every line of the log is one JSON object, the run's lines name their
/// stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let db = TestDb::new(common::Backend::Sqlite, "json_logs");
    let s = Setup::start(
        &db,
        SandboxConfig::graas(1, 50),
        &AccountToml::default(),
        |text| text,
    )
    .await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ordersync"))
        .args(["run", "--once", "--config"])
        .arg(&s.config_path)
        .env_remove("ORDERSYNC_CONFIG")
        .env("ORDERSYNC_LOG__FORMAT", "json")
        .env("ORDERSYNC_LOG__LEVEL", "info")
        .output()
        .expect("run ordersync");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let finished: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "run finished")
        .map(|l| &l["fields"]["stream"])
        .collect();
    assert!(
        finished.contains(&&serde_json::json!("graas/shop-1/orders")),
        "{finished:?} in {log}"
    );
    assert!(!log.contains('\u{1b}'));
    s.sandbox.stop().await;
}
