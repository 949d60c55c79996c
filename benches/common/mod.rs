//! What the benchmarks share: sizes from the environment, and the sandbox in its own process.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_ordersync");

/// `name` from the environment as a number, else `default`.
pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A child process killed when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// Starts `ordersync sandbox` with `args` and returns it with its base URL once it listens.
pub fn start_sandbox(args: &[&str]) -> Result<(Process, String), String> {
    // Port 0: the sandbox binds it and prints the address it got.
    let mut child = Command::new(BIN)
        .args(["sandbox", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the sandbox: {e}"))?;
    let stdout = child.stdout.take().ok_or("no sandbox stdout")?;
    let process = Process(child);
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if let Some(url) = line.strip_prefix("sandbox listening on ") {
            return Ok((process, url.trim().to_owned()));
        }
    }
    Err("the sandbox exited before listening".into())
}

/// The Postgres to benchmark against (`ORDERSYNC_BENCH_PG`, else `ORDERSYNC_TEST_PG`); `None`
/// says on stdout that Postgres is skipped.
pub fn pg_url() -> Option<String> {
    let url = std::env::var("ORDERSYNC_BENCH_PG")
        .or_else(|_| std::env::var("ORDERSYNC_TEST_PG"))
        .ok()
        .filter(|u| !u.is_empty());
    if url.is_none() {
        println!("postgres  skipped: set ORDERSYNC_TEST_PG or ORDERSYNC_BENCH_PG");
    }
    url
}

/// Drops a benchmark's schema, so the next case (or run) starts empty.
pub fn drop_schema(url: &str, schema: &str) {
    let _ = Command::new("psql")
        .args([
            url,
            "-qc",
            &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        ])
        .stderr(Stdio::null())
        .status();
}
