//! The faults every simulated provider injects, decided one request at a time: a 429 (with
//! `Retry-After`) above a per-second rate, 5xx answers, slow answers and truncated bodies. Each
//! provider renders the refusal in its own error shape.

use super::Faults;
use rand::Rng;
use serde::Serialize;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What one account's API saw of its requests.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TrafficStats {
    pub requests: u64,
    /// Requests answered 429 because they went over `rate_limit_per_sec`.
    pub over_limit: u64,
    pub server_errors: u64,
    pub slow: u64,
    pub truncated: u64,
    /// The most requests seen within any one second.
    pub max_per_second: u64,
}

/// How one request is to be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Served, perhaps late and perhaps cut short.
    Served {
        slow: Option<Duration>,
        truncate: bool,
    },
    /// 429 with this `Retry-After`.
    RateLimited { retry_after_secs: u64 },
    /// 503.
    ServerError,
}

/// One account's requests over the last second, for its rate limit.
#[derive(Debug, Default)]
pub struct FaultGate {
    recent: VecDeque<Instant>,
}

impl FaultGate {
    /// Counts the request and decides its fate under `faults`.
    pub fn admit(
        &mut self,
        faults: &Faults,
        stats: &mut TrafficStats,
        rng: &mut impl Rng,
    ) -> Admission {
        let now = Instant::now();
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        stats.requests += 1;
        stats.max_per_second = stats.max_per_second.max(self.recent.len() as u64);
        if faults
            .rate_limit_per_sec
            .is_some_and(|limit| self.recent.len() > limit as usize)
        {
            stats.over_limit += 1;
            return Admission::RateLimited {
                retry_after_secs: faults.retry_after_secs,
            };
        }
        if rng.random_bool(faults.server_error_ratio.clamp(0.0, 1.0)) {
            stats.server_errors += 1;
            return Admission::ServerError;
        }
        let slow = rng.random_bool(faults.slow_ratio.clamp(0.0, 1.0));
        stats.slow += u64::from(slow);
        let truncate = rng.random_bool(faults.truncate_ratio.clamp(0.0, 1.0));
        stats.truncated += u64::from(truncate);
        Admission::Served {
            slow: slow.then(|| Duration::from_millis(faults.slow_ms)),
            truncate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn requests_over_the_rate_are_refused_and_counted() {
        let faults = Faults {
            rate_limit_per_sec: Some(3),
            retry_after_secs: 2,
            ..Faults::default()
        };
        let (mut gate, mut stats) = (FaultGate::default(), TrafficStats::default());
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let answers: Vec<Admission> = (0..5)
            .map(|_| gate.admit(&faults, &mut stats, &mut rng))
            .collect();
        let served = Admission::Served {
            slow: None,
            truncate: false,
        };
        let limited = Admission::RateLimited {
            retry_after_secs: 2,
        };
        assert_eq!(answers, [served, served, served, limited, limited]);
        assert_eq!(
            (stats.requests, stats.over_limit, stats.max_per_second),
            (5, 2, 5)
        );
    }

    #[test]
    fn every_request_fails_when_asked_to() {
        let faults = Faults {
            server_error_ratio: 1.0,
            ..Faults::default()
        };
        let (mut gate, mut stats) = (FaultGate::default(), TrafficStats::default());
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        for _ in 0..10 {
            assert_eq!(
                gate.admit(&faults, &mut stats, &mut rng),
                Admission::ServerError
            );
        }
        assert_eq!(stats.server_errors, 10);
    }
}
