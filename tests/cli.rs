//! The real binary: crash and restart, SIGTERM, configuration errors, the demo, `graas get`.

mod common;

use common::{
    AccountToml, Backend, Setup, TestDb, assert_matches_truth, assert_no_gap_below_cursor,
    cursor_of, open_store, spawn_run, wait_until,
};
use ordersync::sandbox::SandboxConfig;
use ordersync::store::Store;
use std::process::{Child, Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ordersync");

fn ordersync(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("ORDERSYNC_CONFIG")
        .output()
        .expect("run ordersync")
}

/// Waits for the child to exit, killing it after `timeout`.
fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ordersync did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn setup(db: &TestDb, orders: usize, account: &AccountToml) -> Setup {
    Setup::start(db, SandboxConfig::graas(1, orders), account, |text| text).await
}

/// Starts `ordersync run` on a 20,000-order backfill paced to take minutes, and returns once it
/// has committed some of it.
async fn start_slow_backfill(db: &TestDb) -> (Setup, Arc<dyn Store>, Child) {
    let slow = AccountToml {
        page_size: 100,
        rate_limit: "10/s",
        ..AccountToml::default()
    };
    let s = setup(db, 20_000, &slow).await;
    let store = open_store(&s.config).await;
    let child = spawn_run(&s.config_path);
    let progress = store.clone();
    wait_until(Duration::from_secs(30), "some committed progress", || {
        let store = progress.clone();
        async move {
            store
                .orders_of("graas", "shop-1")
                .await
                .is_ok_and(|o| o.len() >= 1_000)
        }
    })
    .await;
    (s, store, child)
}

async fn killed_mid_backfill_resumes_without_gaps(db: TestDb) {
    let (s, store, mut child) = start_slow_backfill(&db).await;
    child.kill().expect("SIGKILL");
    child.wait().unwrap();

    let stored = store.orders_of("graas", "shop-1").await.unwrap().len();
    assert!(
        stored < 20_000,
        "the backfill finished before the kill; nothing was tested"
    );
    let cursor = cursor_of(&store, "shop-1")
        .await
        .expect("a committed cursor");
    assert_no_gap_below_cursor(
        &store,
        &s.sandbox,
        &s.spec.graas[0].account_number,
        "shop-1",
        cursor,
    )
    .await;

    // Restart (faster, to finish) and run until caught up.
    let text = std::fs::read_to_string(&s.config_path)
        .unwrap()
        .replace("\"10/s\"", "\"500/s\"");
    std::fs::write(&s.config_path, text).unwrap();
    let out = ordersync(&["run", "--once", "--config", s.config_path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_matches_truth(&store, &s.sandbox, &s.spec).await;
    store.close().await;
    s.sandbox.stop().await;
}
on_both_backends!(killed_mid_backfill_resumes_without_gaps);

async fn sigterm_finishes_the_transaction_and_exits_zero(db: TestDb) {
    let (s, store, mut child) = start_slow_backfill(&db).await;
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let cursor = cursor_of(&store, "shop-1").await.expect("cursor");
    assert_no_gap_below_cursor(
        &store,
        &s.sandbox,
        &s.spec.graas[0].account_number,
        "shop-1",
        cursor,
    )
    .await;
    store.close().await;
    s.sandbox.stop().await;
}
on_both_backends!(sigterm_finishes_the_transaction_and_exits_zero);

/// SQLite takes one daemon per file: a second `ordersync run` refuses to start, naming the
/// process that holds the file; once that one is killed, a run starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_one_sqlite_file_refuses_to_start() {
    let db = TestDb::new(Backend::Sqlite, "second_run");
    let (s, store, mut first) = start_slow_backfill(&db).await;
    let config = s.config_path.to_str().unwrap();
    let second = ordersync(&["run", "--once", "--config", config]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second run started: {stderr}");
    assert!(
        stderr.contains("another `ordersync run`")
            && stderr.contains(&format!("pid {}", first.id())),
        "unclear refusal: {stderr}"
    );
    // Commands other than `run` still use the file while the daemon runs.
    let status = ordersync(&["status", "--config", config]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );

    first.kill().expect("SIGKILL");
    first.wait().unwrap();
    let text = std::fs::read_to_string(&s.config_path)
        .unwrap()
        .replace("\"10/s\"", "\"500/s\"");
    std::fs::write(&s.config_path, text).unwrap();
    let after_kill = ordersync(&["run", "--once", "--config", config]);
    assert!(
        after_kill.status.success(),
        "{}",
        String::from_utf8_lossy(&after_kill.stderr)
    );
    assert_matches_truth(&store, &s.sandbox, &s.spec).await;
    store.close().await;
    s.sandbox.stop().await;
}

async fn graas_get_fetches_and_stores_one_order(db: TestDb) {
    let s = setup(&db, 50, &AccountToml::default()).await;
    let order = s
        .sandbox
        .graas()
        .truth(&s.spec.graas[0].account_number)
        .remove(7);
    let config = s.config_path.to_str().unwrap();
    let out = ordersync(&[
        "graas",
        "get",
        "--config",
        config,
        "--account",
        "shop-1",
        "--channel",
        &order.channel,
        "--order",
        &order.order_id,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("prints the order JSON");
    assert_eq!(printed["orderID"], order.order_id.as_str());
    let store = open_store(&s.config).await;
    let stored = store.orders_of("graas", "shop-1").await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].status.as_deref(), Some(order.status.as_str()));

    let missing = ordersync(&[
        "graas",
        "get",
        "--config",
        config,
        "--account",
        "shop-1",
        "--channel",
        "lazada-1",
        "--order",
        "1",
    ]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no order 1"));
    let unknown = ordersync(&[
        "graas",
        "get",
        "--config",
        config,
        "--account",
        "nope",
        "--channel",
        "lazada-1",
        "--order",
        "1",
    ]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("--account `nope`"));
    store.close().await;
    s.sandbox.stop().await;
}
on_both_backends!(graas_get_fetches_and_stores_one_order);

const VALID: &str = r#"
[[graas]]
name = "sg-shop"
base_url = "https://api.graas.example"
account_number = "5a4e44b3a67a6d000489e5a8"
app_key = "literal"
start_from = "2024-01-01T00:00:00Z"
"#;

fn check_config(text: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    ordersync(&["check-config", "--config", path.to_str().unwrap()])
}

#[test]
fn bad_config_names_the_key_and_exits_non_zero() {
    assert!(check_config(VALID).status.success());
    let cases = [
        (
            VALID.replace("start_from = \"2024-01-01T00:00:00Z\"\n", ""),
            "start_from",
        ),
        (format!("{VALID}page_size = \"ten\"\n"), "page_size"),
        (format!("{VALID}colour = \"blue\"\n"), "colour"),
        (
            VALID.replace("https://api.graas.example", "api dot example"),
            "graas[0].base_url",
        ),
        (
            format!("{VALID}schedule = \"every minute\"\n"),
            "graas[0].schedule",
        ),
        (
            format!("[database]\nurl = \"mysql://x\"\n{VALID}"),
            "database.url",
        ),
    ];
    for (text, key) in cases {
        let out = check_config(&text);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted a config with a bad {key}");
        assert!(
            stderr.contains(key),
            "error for {key} does not name it: {stderr}"
        );
    }
    let missing = ordersync(&["run", "--config", "/nonexistent/ordersync.toml"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/ordersync.toml"));
}

#[test]
fn environment_overrides_file_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, VALID).unwrap();
    let check = |vars: &[(&str, &str)]| {
        let mut command = Command::new(BIN);
        command.args(["check-config", "--config", path.to_str().unwrap()]);
        for (name, value) in vars {
            command.env(name, value);
        }
        let out = command.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (ok, stderr) = check(&[("ORDERSYNC_DATABASE__URL", "oracle://nope")]);
    assert!(!ok && stderr.contains("database.url"), "{stderr}");
    // Keys of an account are overridden by its position in the file.
    let (ok, stderr) = check(&[("ORDERSYNC_GRAAS__0__PAGE_SIZE", "0")]);
    assert!(!ok && stderr.contains("graas[0].page_size"), "{stderr}");
    let (ok, stderr) = check(&[("ORDERSYNC_GRAAS__0__APP_KEY", "from-env")]);
    assert!(ok, "{stderr}");
    let (ok, stderr) = check(&[("ORDERSYNC_GRAAS__3__APP_KEY", "x")]);
    assert!(
        !ok && stderr.contains("graas[3]") && stderr.contains("ORDERSYNC_GRAAS__3__APP_KEY"),
        "{stderr}"
    );
    let (ok, stderr) = check(&[("ORDERSYNC_GRAAS__0__APP_KEI", "x")]);
    assert!(!ok && stderr.contains("app_kei"), "{stderr}");
}

#[test]
fn demo_syncs_the_sandbox_and_summarises() {
    let out = ordersync(&["demo", "--for", "6s", "--orders", "500"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("summary after"), "{stdout}");
    assert!(
        stdout.contains("shop-1") && stdout.contains("shop-2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("kf-1: ") && stdout.contains("none submitted twice"),
        "{stdout}"
    );
}

#[test]
fn the_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let out = Command::new(BIN)
        .args(["check-config", "--config", example])
        .env("GRAAS_SG_KEY", "example-key")
        .env("GID_CLIENT_SECRET", "example-secret")
        .env("GID_HOOK_SECRET", "example-hook-secret")
        .env("KF_PIZZA_MITTE_PASSWORD", "example-password")
        .env("GRAFTERR_API_KEY", "example-api-key")
        .env("GRAFTERR_CLIENT_SECRET", "example-client-secret")
        .env("GRAFTERR_PATH_TOKEN", "example-path-token-0123")
        .env("LAGERKOLL_API_KEY", "example-api-key")
        .env("LAGERKOLL_PATH_TOKEN", "example-path-token-4567")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without its secret it names the key and the variable.
    let out = Command::new(BIN)
        .args(["check-config", "--config", example])
        .env_remove("GRAAS_SG_KEY")
        .env("GID_CLIENT_SECRET", "example-secret")
        .env_remove("GID_HOOK_SECRET")
        .env_remove("KF_PIZZA_MITTE_PASSWORD")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("graas[0].app_key") && stderr.contains("GRAAS_SG_KEY"),
        "{stderr}"
    );
    assert!(
        stderr.contains("getitdone[0].webhook_secrets[0]") && stderr.contains("GID_HOOK_SECRET"),
        "{stderr}"
    );
    assert!(
        stderr.contains("kassaforte[0].password") && stderr.contains("KF_PIZZA_MITTE_PASSWORD"),
        "{stderr}"
    );
    assert!(!stderr.contains("example-key") && !stderr.contains("example-secret"));
}

async fn status_reports_each_stream(db: TestDb) {
    let s = setup(&db, 50, &AccountToml::default()).await;
    let config = s.config_path.to_str().unwrap().to_owned();
    let run = ordersync(&["run", "--once", "--config", &config]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let healthy = ordersync(&["status", "--config", &config]);
    let stdout = String::from_utf8_lossy(&healthy.stdout);
    assert!(healthy.status.success(), "{stdout}");
    assert!(
        stdout.contains("graas/shop-1/orders") && stdout.contains(" ok "),
        "{stdout}"
    );

    // An account that was never polled needs a look: non-zero, and said so.
    let text = std::fs::read_to_string(&s.config_path).unwrap();
    let second =
        text[text.find("[[graas]]").unwrap()..].replace("name = \"shop-1\"", "name = \"shop-2\"");
    std::fs::write(&s.config_path, format!("{text}\n{second}")).unwrap();
    let unhealthy = ordersync(&["status", "--config", &config]);
    let stdout = String::from_utf8_lossy(&unhealthy.stdout);
    assert!(!unhealthy.status.success(), "{stdout}");
    assert!(
        stdout.contains("graas/shop-2/orders") && stdout.contains("never run"),
        "{stdout}"
    );
    // The same for scripts.
    let json = ordersync(&["status", "--json", "--config", &config]);
    assert!(!json.status.success());
    let report: serde_json::Value =
        serde_json::from_slice(&json.stdout).expect("status --json prints one JSON object");
    assert_eq!(report["healthy"], false);
    let health: Vec<(String, String)> = report["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stream"].as_str().unwrap().to_owned(),
                s["health"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        health.contains(&("graas/shop-1/orders".into(), "ok".into())),
        "{health:?}"
    );
    assert!(
        health.contains(&("graas/shop-2/orders".into(), "never run".into())),
        "{health:?}"
    );
    assert!(
        report["accounts"][0]["actions"]["pending"].is_number(),
        "{report}"
    );
    s.sandbox.stop().await;
}
on_both_backends!(status_reports_each_stream);

/// A script that reads only the sandbox's address and closes the pipe must not kill it.
#[test]
fn the_sandbox_outlives_a_reader_that_stops_reading() {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut child = Command::new(BIN)
        .args(["sandbox", "--listen", "127.0.0.1:0", "--orders", "10"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first).unwrap();
    let url = first
        .trim()
        .strip_prefix("sandbox listening on http://")
        .expect("the address comes first")
        .to_owned();
    // The reader is gone now; the sandbox keeps serving.
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        assert!(child.try_wait().unwrap().is_none(), "the sandbox died");
        let mut conn = std::net::TcpStream::connect(&url).expect("the sandbox listens");
        write!(
            conn,
            "GET /_sandbox/graas/stats HTTP/1.1\r\nHost: {url}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A run that lasts past the moment its start is recorded keeps committing meanwhile: the
/// start's write must not wait on a commit the paused run holds (on SQLite that stalled every
/// long run until the busy timeout, 30 s, and then failed with "database is locked").
async fn a_long_run_records_its_start_without_stalling_its_commits(db: TestDb) {
    let account = AccountToml {
        page_size: 50,
        rate_limit: "100/s",
        ..AccountToml::default()
    };
    // 8,000 orders in pages of 50 at 100 requests a second: a run of about two seconds.
    let setup = Setup::start(&db, SandboxConfig::graas(1, 8_000), &account, |t| t).await;
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["run", "--once", "--config"])
        .arg(&setup.config_path)
        .env_remove("ORDERSYNC_CONFIG")
        .output()
        .expect("run");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        took > Duration::from_secs(1),
        "the run must outlast the start's record: {took:?}"
    );
    assert!(
        !stderr.contains("cannot record the run's start"),
        "{stderr}"
    );
    assert!(!stderr.contains("database is locked"), "{stderr}");
    let store = open_store(&setup.config).await;
    let streams = store.streams().await.expect("streams");
    assert!(streams[0].last_run_started_at.is_some() && streams[0].last_error.is_none());
}
on_both_backends!(a_long_run_records_its_start_without_stalling_its_commits);

/// The filesystem type of the mount holding `path`, from /proc/mounts (the longest mount point
/// that is a prefix of it).
fn filesystem_of(path: &std::path::Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _device = fields.next()?;
            let point = fields.next()?;
            let kind = fields.next()?;
            path.starts_with(point)
                .then(|| (point.len(), kind.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, kind)| kind)
}

/// `run --once` ends with one line of figures for benchmarks and capacity planning; what it
/// wrote for the disk covers at least the orders it added to the database file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_reports_what_it_wrote_for_the_disk() {
    let db = TestDb::new(
        Backend::Sqlite,
        "run_once_reports_what_it_wrote_for_the_disk",
    );
    let s = setup(&db, 3_000, &AccountToml::default()).await;
    let path = std::path::PathBuf::from(db.url.trim_start_matches("sqlite://"));
    let size = |path: &std::path::Path| std::fs::metadata(path).map_or(0, |m| m.len());
    let before = size(&path);
    let out = ordersync(&["run", "--once", "--config", s.config_path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let figures: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert!(figures["elapsed_ms"].is_u64(), "{figures}");
    assert!(figures["peak_rss_kb"].is_u64(), "{figures}");
    assert!(figures["cpu_ms_by_thread"].is_object(), "{figures}");
    let written_kb = figures["storage_written_kb"]
        .as_u64()
        .unwrap_or_else(|| panic!("storage_written_kb missing: {figures}"));
    let grown = size(&path).saturating_sub(before);
    assert!(
        grown > 3_000 * 500,
        "3,000 orders grew the file by {grown} bytes"
    );
    // A RAM-backed filesystem sends nothing to a disk, and the kernel counts nothing for it.
    if filesystem_of(&path).as_deref() != Some("tmpfs") {
        assert!(
            written_kb * 1024 >= grown,
            "{written_kb} KiB written for the disk, the database file grew by {grown} bytes"
        );
    }
    s.sandbox.stop().await;
}
