//! A catch-up shown to a person at a terminal: one line per window-read stream every few
//! seconds (how far its cursor got between `start_from` and now, orders written, time left),
//! while any stream is more than a few minutes behind. Nothing when stderr is not a terminal.

use chrono::{DateTime, Utc};
use ordersync::config::Config;
use ordersync::sync::StreamRunner;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A stream this close to now has caught up.
const CAUGHT_UP: i64 = 5 * 60;
const EVERY: Duration = Duration::from_secs(3);

/// Prints the catch-up until every stream has caught up or `stop` is cancelled.
pub fn spawn(config: &Config, runners: &[Arc<StreamRunner>], stop: CancellationToken) {
    if !std::io::stderr().is_terminal() || runners.is_empty() {
        return;
    }
    let streams: Vec<(Arc<StreamRunner>, DateTime<Utc>)> = runners
        .iter()
        .filter_map(|runner| {
            let account = config.graas_account(&runner.stream().account)?;
            Some((runner.clone(), account.start_from))
        })
        .collect();
    tokio::spawn(async move {
        let started = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(EVERY) => {}
            }
            let now = Utc::now().timestamp();
            let mut behind = false;
            for (runner, start) in &streams {
                let progress = runner.progress().snapshot();
                let (start, cursor) = (start.timestamp(), progress.cursor.max(start.timestamp()));
                let lag = now - cursor;
                behind |= lag > CAUGHT_UP;
                let done = (cursor - start) as f64 / ((now - start).max(1)) as f64;
                let left = match done > 0.0 && lag > CAUGHT_UP {
                    true => {
                        let secs = started.elapsed().as_secs_f64() * (1.0 - done) / done;
                        humantime::format_duration(Duration::from_secs(secs as u64)).to_string()
                    }
                    false => "-".to_owned(),
                };
                eprintln!(
                    "catch-up {:<32} {:>5.1}%  {:>9} written  {:>8} behind  time left {left}",
                    runner.stream().to_string(),
                    done * 100.0,
                    progress.written,
                    humantime::format_duration(Duration::from_secs((lag.max(0) / 60 * 60) as u64))
                        .to_string(),
                );
            }
            if !behind {
                break;
            }
        }
    });
}
