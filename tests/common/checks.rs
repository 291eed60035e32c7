//! One `Check` per algorithm, by policy name, window (or period, lease TTL)
//! in milliseconds, limit and cost: the builders shared by the store tests.

#![allow(dead_code)]

use std::time::Duration;

use tower_tenancy::store::{Algorithm, Check};
use tower_tenancy::Period;

pub fn sw(policy: &str, window_ms: u64, limit: u64, cost: u64) -> Check {
    Check::new(
        policy,
        Algorithm::SlidingWindow {
            window: Duration::from_millis(window_ms),
        },
        limit,
        cost,
    )
}

pub fn approx(policy: &str, window_ms: u64, limit: u64, cost: u64) -> Check {
    Check::new(
        policy,
        Algorithm::SlidingWindowApprox {
            window: Duration::from_millis(window_ms),
        },
        limit,
        cost,
    )
}

pub fn gcra(policy: &str, window_ms: u64, limit: u64, burst: u64, cost: u64) -> Check {
    Check::new(
        policy,
        Algorithm::Gcra {
            window: Duration::from_millis(window_ms),
            burst,
        },
        limit,
        cost,
    )
}

pub fn sl(policy: &str, window_ms: u64, limit: u64, cost: u64) -> Check {
    Check::new(
        policy,
        Algorithm::SlidingLog {
            window: Duration::from_millis(window_ms),
        },
        limit,
        cost,
    )
}

pub fn cal(policy: &str, period: Period, limit: u64, cost: u64) -> Check {
    Check::new(policy, Algorithm::Calendar { period }, limit, cost)
}

pub fn cc(policy: &str, ttl_ms: u64, limit: u64, cost: u64) -> Check {
    Check::new(
        policy,
        Algorithm::Concurrency {
            lease_ttl: Duration::from_millis(ttl_ms),
        },
        limit,
        cost,
    )
}

pub fn gauge(policy: &str, limit: u64, cost: u64) -> Check {
    Check::new(policy, Algorithm::Gauge, limit, cost)
}
