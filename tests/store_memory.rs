//! The store conformance suite against [`MemoryStore`], alone and through a
//! [`ResilientStore`]: over a healthy primary, with a fallback configured,
//! and with a dead primary (every decision from the fallback).

#[path = "common/conformance.rs"]
mod conformance;

use std::sync::Arc;
use std::time::Duration;

use tower_tenancy::future::MaybeReady;
use tower_tenancy::store::{
    Admission, Check, CounterStore, Decisions, FailurePolicy, ManualClock, ResilientStore,
    StoreError, StoreResult,
};
use tower_tenancy::{MemoryStore, TenantId};

fn store(clock: Arc<ManualClock>) -> MemoryStore {
    MemoryStore::with_clock(clock)
}

macro_rules! scenarios {
    ($($flavor:literal: $($name:ident),* ;)*) => {$($(
        #[tokio::test(flavor = $flavor)]
        async fn $name() {
            let clock = Arc::new(ManualClock::new(conformance::T0));
            conformance::$name(store(clock.clone()), clock).await;
        }
    )*)*};
}

scenarios! {
    "current_thread":
        sliding_window_approx_limit,
        sliding_window_approx_weighting,
        sliding_log_limit,
        sliding_log_costs,
        calendar_hour,
        calendar_day,
        calendar_week,
        calendar_month_end,
        calendar_leap_february,
        calendar_february,
        calendar_year_end,
        batch_all_or_nothing,
        cost_above_limit,
        zero_cost,
        peek_consumes_nothing,
        concurrency_lease,
        gauge_adjust,
        isolation,
        clock_goes_backwards,
        calendar_first_request_1ms_before_a_period,
        extreme_values;
    "multi_thread":
        concurrent_exact,
        concurrent_batches;
}

/// Everything at once, as another store would run it.
#[tokio::test(flavor = "multi_thread")]
async fn run_all() {
    conformance::run_all(|clock| async move { store(clock) }).await;
}

/// The same suite on a single shard with automatic sweeps after every call:
/// eviction must never change a decision.
#[tokio::test(flavor = "multi_thread")]
async fn run_all_one_shard_eager_sweeps() {
    conformance::run_all(|clock| async move {
        MemoryStore::builder()
            .shards(1)
            .sweep_every(1)
            .clock(clock)
            .build()
    })
    .await;
}

/// Through a `ResilientStore` whose primary is healthy.
#[tokio::test(flavor = "multi_thread")]
async fn run_all_resilient_healthy() {
    conformance::run_all(|clock| async move {
        ResilientStore::new(store(clock))
            .timeout(Duration::from_secs(30))
            .policy(FailurePolicy::FailClosed)
    })
    .await;
}

/// With a fallback configured: the healthy primary still decides.
#[tokio::test(flavor = "multi_thread")]
async fn run_all_resilient_with_a_fallback() {
    conformance::run_all(|clock| async move {
        ResilientStore::new(store(clock.clone()))
            .timeout(Duration::from_secs(30))
            .fallback(store(clock))
    })
    .await;
}

/// A primary that is down (every call fails at once).
struct Dead;

impl CounterStore for Dead {
    fn admit(&self, _: &TenantId, _: &[Check]) -> MaybeReady<StoreResult<Admission>> {
        MaybeReady::ready(Err(StoreError::Backend("connection refused".into())))
    }
    fn peek(&self, _: &TenantId, _: &[Check]) -> MaybeReady<StoreResult<Decisions>> {
        MaybeReady::ready(Err(StoreError::Backend("connection refused".into())))
    }
    fn adjust(&self, _: &TenantId, _: &str, _: i64) -> MaybeReady<StoreResult<u64>> {
        MaybeReady::ready(Err(StoreError::Backend("connection refused".into())))
    }
}

/// A dead primary: the fallback answers every call with the same semantics.
#[tokio::test(flavor = "multi_thread")]
async fn run_all_resilient_dead_primary_fallback() {
    conformance::run_all(|clock| async move { ResilientStore::new(Dead).fallback(store(clock)) })
        .await;
}
