//! Is each stream being polled? The scheduler can stop firing without a word, so every stream's
//! latest activity is checked against its own schedule.

use crate::store::StreamStatus;
use chrono::{DateTime, Duration, Utc};
use croner::parser::{CronParser, Seconds};

/// Ticks a stream may miss before it counts as overdue (one can be skipped by a long run).
const MISSED_TICKS: usize = 3;
/// Slack on top, for slow starts and clock jitter.
const GRACE: Duration = Duration::seconds(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Polled on schedule; the latest run succeeded (or is still going).
    Ok,
    /// Polled on schedule, but the latest run failed.
    Failing,
    /// No run started, finished or moved the cursor within the last few ticks.
    Overdue,
    /// Configured, but never run against this database.
    NeverRun,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Failing => "failing",
            Health::Overdue => "overdue",
            Health::NeverRun => "never run",
        }
    }
}

/// The time before which a stream on `schedule` should have shown activity, seen at `now`.
/// `None` when the schedule does not parse (the config check reports that).
pub fn activity_deadline(schedule: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let cron = CronParser::builder()
        .seconds(Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(schedule)
        .ok()?;
    let mut tick = now;
    for _ in 0..MISSED_TICKS {
        tick = cron.find_previous_occurrence(&tick, false).ok()?;
    }
    Some(tick - GRACE)
}

/// Judges a stream from its stored status (`None`: no row yet).
pub fn assess(schedule: &str, status: Option<&StreamStatus>, now: DateTime<Utc>) -> Health {
    let Some(status) = status else {
        return Health::NeverRun;
    };
    // A long backfill keeps its run open but moves the cursor, which counts as activity.
    let latest = [
        status.last_run_started_at,
        status.last_run_finished_at,
        status.cursor_updated_at,
    ]
    .into_iter()
    .flatten()
    .max();
    let Some(latest) = latest else {
        return Health::NeverRun;
    };
    if activity_deadline(schedule, now).is_some_and(|deadline| latest < deadline) {
        return Health::Overdue;
    }
    if status.last_error.is_some() {
        return Health::Failing;
    }
    Health::Ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ProviderKind, StreamKey};

    fn status(last_run_started_at: DateTime<Utc>, last_error: Option<&str>) -> StreamStatus {
        StreamStatus {
            stream: StreamKey {
                provider: ProviderKind::Graas,
                account: "a".into(),
                resource: "orders".into(),
            },
            cursor: Some("1".into()),
            cursor_updated_at: None,
            last_run_started_at: Some(last_run_started_at),
            last_run_finished_at: None,
            last_success_at: None,
            last_error: last_error.map(str::to_owned),
            consecutive_failures: 0,
        }
    }

    #[test]
    fn a_stream_that_stopped_being_polled_is_overdue() {
        let now = Utc::now();
        let every_30s = "*/30 * * * * *";
        assert_eq!(
            assess(
                every_30s,
                Some(&status(now - Duration::seconds(20), None)),
                now
            ),
            Health::Ok
        );
        assert_eq!(
            assess(
                every_30s,
                Some(&status(now - Duration::seconds(400), None)),
                now
            ),
            Health::Overdue
        );
        // Hourly polling is not overdue after ten minutes.
        assert_eq!(
            assess(
                "0 0 * * * *",
                Some(&status(now - Duration::seconds(600), None)),
                now
            ),
            Health::Ok
        );
    }

    #[test]
    fn failing_and_never_run_are_told_apart() {
        let now = Utc::now();
        assert_eq!(assess("*/30 * * * * *", None, now), Health::NeverRun);
        assert_eq!(
            assess("*/30 * * * * *", Some(&status(now, Some("HTTP 503"))), now),
            Health::Failing
        );
    }
}
