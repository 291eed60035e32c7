//! The store conformance suite against [`MemoryStore`].

#[path = "common/conformance.rs"]
mod conformance;

use std::sync::Arc;

use tower_tenancy::store::ManualClock;
use tower_tenancy::MemoryStore;

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
