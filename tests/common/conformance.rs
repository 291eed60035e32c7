//! Store conformance suite: the semantics of `tower_tenancy::store` (see the
//! module documentation of `src/store/mod.rs`), written once and run against
//! every [`CounterStore`].
//!
//! Include it in a test crate with
//!
//! ```ignore
//! #[path = "common/conformance.rs"]
//! mod conformance;
//! ```
//!
//! then either run everything:
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread")]
//! async fn conformance() {
//!     conformance::run_all(|clock| async move { MyStore::with_clock(clock) }).await;
//! }
//! ```
//!
//! or call the scenarios one by one (one `#[tokio::test]` each gives better
//! failure reports). Every scenario has the signature
//! `pub async fn name<S: CounterStore>(store: S, clock: Arc<ManualClock>)`:
//! it takes a fresh store whose time is `clock`, sets the clock itself, and
//! uses tenant ids with a random suffix, so that scenarios can run in
//! parallel against one shared backend (a Redis server). Times are in
//! November 2026 unless a scenario needs a particular date.
//!
//! The concurrency scenarios spawn tokio tasks: run them on a multi-thread
//! runtime (`#[tokio::test(flavor = "multi_thread")]`) to exercise real
//! parallelism.
#![allow(dead_code)]

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tower_tenancy::store::{Admission, Algorithm, Check, CounterStore, Decision, ManualClock};
use tower_tenancy::{Period, TenantId};

/// 2026-11-23T00:00:00Z, a Monday (a multiple of every window used here).
pub const T0: u64 = 1_795_392_000_000;

const SEC: u64 = 1_000;
const HOUR: u64 = 3_600 * SEC;
const DAY: u64 = 24 * HOUR;

/// Runs every portable scenario, each with a fresh store from `make` and a
/// fresh [`ManualClock`] (the store must read its time from that clock).
///
/// [`extreme_values`] is not included: it uses `u64::MAX` limits and costs
/// and zero or huge windows, which a store backed by Lua numbers may answer
/// with an error rather than a decision.
pub async fn run_all<S, F, Fut>(make: F)
where
    S: CounterStore,
    F: Fn(Arc<ManualClock>) -> Fut,
    Fut: Future<Output = S>,
{
    macro_rules! run {
        ($($scenario:ident),* $(,)?) => {$(
            let clock = Arc::new(ManualClock::new(T0));
            $scenario(make(clock.clone()).await, clock).await;
        )*};
    }
    run!(
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
        concurrent_exact,
        concurrent_batches,
        clock_goes_backwards,
        calendar_first_request_1ms_before_a_period,
    );
}

// ---------------------------------------------------------------------------
// Helpers.

/// A tenant id unique to this process and call: `prefix-<16 hex digits>`.
pub fn unique_tenant(prefix: &str) -> TenantId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let suffix = RandomState::new().hash_one((std::process::id(), n, SystemTime::now()));
    format!("{prefix}-{suffix:016x}")
        .parse()
        .expect("valid tenant id")
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn window(ms: u64) -> Algorithm {
    Algorithm::SlidingWindow {
        window: Duration::from_millis(ms),
    }
}

fn approx(ms: u64) -> Algorithm {
    Algorithm::SlidingWindowApprox {
        window: Duration::from_millis(ms),
    }
}

fn log(ms: u64) -> Algorithm {
    Algorithm::SlidingLog {
        window: Duration::from_millis(ms),
    }
}

fn calendar(period: Period) -> Algorithm {
    Algorithm::Calendar { period }
}

fn concurrency() -> Algorithm {
    Algorithm::Concurrency {
        lease_ttl: Duration::from_secs(300),
    }
}

async fn admit<S: CounterStore>(store: &S, tenant: &TenantId, checks: &[Check]) -> Admission {
    let admission = store.admit(tenant, checks).await.expect("store error");
    assert_eq!(admission.decisions.len(), checks.len());
    if !admission.allowed() {
        assert!(admission.lease.is_none(), "a denied batch holds no lease");
    }
    admission
}

async fn admit1<S: CounterStore>(store: &S, tenant: &TenantId, check: &Check) -> Decision {
    admit(store, tenant, std::slice::from_ref(check))
        .await
        .decisions[0]
}

async fn peek<S: CounterStore>(store: &S, tenant: &TenantId, checks: &[Check]) -> Vec<Decision> {
    let decisions = store.peek(tenant, checks).await.expect("store error");
    assert_eq!(decisions.len(), checks.len());
    decisions.to_vec()
}

/// The current level of a counter (a peek with cost 0).
async fn level<S: CounterStore>(store: &S, tenant: &TenantId, check: &Check) -> u64 {
    let probe = Check {
        cost: 0,
        ..check.clone()
    };
    peek(store, tenant, &[probe]).await[0].used
}

#[track_caller]
fn allowed(d: &Decision, used: u64, reset_ms: u64) {
    assert!(d.allowed, "expected allowed: {d:?}");
    assert_eq!(d.used, used, "used: {d:?}");
    assert_eq!(
        d.remaining,
        d.limit.saturating_sub(used),
        "remaining: {d:?}"
    );
    assert_eq!(d.reset, ms(reset_ms), "reset: {d:?}");
    assert_eq!(d.retry_after, None, "retry_after: {d:?}");
}

#[track_caller]
fn denied(d: &Decision, used: u64, reset_ms: u64, retry_ms: Option<u64>) {
    assert!(!d.allowed, "expected denied: {d:?}");
    assert_eq!(d.used, used, "used: {d:?}");
    assert_eq!(
        d.remaining,
        d.limit.saturating_sub(used),
        "remaining: {d:?}"
    );
    assert_eq!(d.reset, ms(reset_ms), "reset: {d:?}");
    assert_eq!(d.retry_after, retry_ms.map(ms), "retry_after: {d:?}");
}

// ---------------------------------------------------------------------------
// Two-counter sliding window (the sub-bucket window and GCRA are in
// rate_conformance.rs).

/// Exactly `limit` admitted, then denied with the spec's retry time, and the
/// request passes once that time has elapsed.
pub async fn sliding_window_approx_limit<S: CounterStore>(store: S, clock: Arc<ManualClock>) {
    let t = unique_tenant("sw-limit");
    let w = 10 * SEC;
    let c = Check::new("calls", approx(w), 5, 1);
    clock.set_ms(T0 + SEC);
    for i in 1..=5 {
        allowed(&admit1(&store, &t, &c).await, i, 9 * SEC);
    }
    // curr + cost > limit: wait into the next window, where prev = 5 must fade
    // to 4: e = ceil((5 - 4) * W / 5) = 2 s; retry = 9 s + 2 s.
    denied(&admit1(&store, &t, &c).await, 5, 9 * SEC, Some(11 * SEC));
    denied(&admit1(&store, &t, &c).await, 5, 9 * SEC, Some(11 * SEC));
    assert_eq!(level(&store, &t, &c).await, 5, "denials consume nothing");

    // 2 s into the next window: used = 0 + floor(5 * 8 / 10) = 4.
    clock.set_ms(T0 + 12 * SEC);
    assert_eq!(level(&store, &t, &c).await, 4);
    allowed(&admit1(&store, &t, &c).await, 5, 8 * SEC);
    // curr + cost <= limit: room = 5 - 1 - 1 = 3, e = ceil((5 - 3) * W / 5) = 4 s,
    // retry = 4 s - 2 s.
    denied(&admit1(&store, &t, &c).await, 5, 8 * SEC, Some(2 * SEC));
    clock.set_ms(T0 + 14 * SEC);
    // used = 1 + floor(5 * 6 / 10) = 4.
    allowed(&admit1(&store, &t, &c).await, 5, 6 * SEC);

    // The window after: prev = 2 (the window [10 s, 20 s)), half faded.
    clock.set_ms(T0 + 25 * SEC);
    assert_eq!(level(&store, &t, &c).await, 1);
    // Two windows later nothing is left.
    clock.set_ms(T0 + 40 * SEC);
    assert_eq!(level(&store, &t, &c).await, 0);
    allowed(&admit1(&store, &t, &c).await, 1, 10 * SEC);
}

/// `used = curr + floor(prev * (W - elapsed) / W)` at several points, and
/// both retry branches with `cost > 1`.
pub async fn sliding_window_approx_weighting<S: CounterStore>(store: S, clock: Arc<ManualClock>) {
    let t = unique_tenant("sw-weight");
    let w = 60 * SEC;
    let c = |cost| Check::new("calls", approx(w), 10, cost);
    clock.set_ms(T0);
    allowed(&admit1(&store, &t, &c(10)).await, 10, w);
    for (elapsed, expected) in [
        (0, 10),
        (1, 9),
        (6 * SEC, 9),
        (6 * SEC + 1, 8),
        (15 * SEC, 7),
    ] {
        clock.set_ms(T0 + w + elapsed);
        assert_eq!(
            level(&store, &t, &c(1)).await,
            expected,
            "elapsed {elapsed}"
        );
    }
    clock.set_ms(T0 + w + 15 * SEC);
    allowed(&admit1(&store, &t, &c(3)).await, 10, 45 * SEC);
    // curr = 3, prev = 10: room = 10 - 1 - 3 = 6, e = ceil(4 * 60 s / 10) = 24 s.
    denied(
        &admit1(&store, &t, &c(1)).await,
        10,
        45 * SEC,
        Some(9 * SEC),
    );
    clock.set_ms(T0 + w + 24 * SEC);
    // used = 3 + floor(10 * 36 / 60) = 9.
    allowed(&admit1(&store, &t, &c(1)).await, 10, 36 * SEC);
    // cost 7: curr + cost = 11 > 10: next window, prev' = 4 must fade to 3:
    // e = ceil(1 * 60 s / 4) = 15 s; retry = 36 s + 15 s.
    denied(
        &admit1(&store, &t, &c(7)).await,
        10,
        36 * SEC,
        Some(51 * SEC),
    );
    clock.set_ms(T0 + 2 * w + 15 * SEC);
    allowed(&admit1(&store, &t, &c(7)).await, 10, 45 * SEC);
}

// ---------------------------------------------------------------------------
// Sliding log.

/// Exactly `limit` admitted; entries expire exactly `W` after their time;
/// reset and retry per the spec.
pub async fn sliding_log_limit<S: CounterStore>(store: S, clock: Arc<ManualClock>) {
    let t = unique_tenant("log-limit");
    let w = 10 * SEC;
    let c = |cost| Check::new("calls", log(w), 3, cost);
    clock.set_ms(T0 + 500);
    allowed(&admit1(&store, &t, &c(1)).await, 1, w);
    clock.set_ms(T0 + 1_500);
    allowed(&admit1(&store, &t, &c(1)).await, 2, 9_000);
    clock.set_ms(T0 + 2_500);
    allowed(&admit1(&store, &t, &c(1)).await, 3, 8_000);
    clock.set_ms(T0 + 3_000);
    denied(&admit1(&store, &t, &c(1)).await, 3, 7_500, Some(7_500));
    // cost 2 needs 2 units freed: the second entry's expiry.
    denied(&admit1(&store, &t, &c(2)).await, 3, 7_500, Some(8_500));
    denied(&admit1(&store, &t, &c(3)).await, 3, 7_500, Some(9_500));
    denied(&admit1(&store, &t, &c(4)).await, 3, 7_500, None);
    // The first entry (T0 + 500) counts while T0 + 500 > now - W.
    clock.set_ms(T0 + 10_499);
    denied(&admit1(&store, &t, &c(1)).await, 3, 1, Some(1));
    clock.set_ms(T0 + 10_500);
    allowed(&admit1(&store, &t, &c(1)).await, 3, 1_000);
    // Every entry gone after W.
    clock.set_ms(T0 + 20_500);
    assert_eq!(level(&store, &t, &c(1)).await, 0);
    denied(&admit1(&store, &t, &c(4)).await, 0, 0, None);
    allowed(&admit1(&store, &t, &c(3)).await, 3, w);
}

/// Entries carrying several units, several entries in one millisecond.
pub async fn sliding_log_costs<S: CounterStore>(store: S, clock: Arc<ManualClock>) {
    let t = unique_tenant("log-costs");
    let w = 60 * SEC;
    let c = |cost| Check::new("bytes", log(w), 10, cost);
    clock.set_ms(T0);
    allowed(&admit1(&store, &t, &c(4)).await, 4, w);
    allowed(&admit1(&store, &t, &c(1)).await, 5, w);
    clock.set_ms(T0 + 10 * SEC);
    allowed(&admit1(&store, &t, &c(3)).await, 8, 50 * SEC);
    clock.set_ms(T0 + 20 * SEC);
    allowed(&admit1(&store, &t, &c(2)).await, 10, 40 * SEC);
    // Needs 1, 5, 6 and 10 units freed: the entries at T0 (5 units),
    // T0 + 10 s (3) and T0 + 20 s (2).
    denied(
        &admit1(&store, &t, &c(1)).await,
        10,
        40 * SEC,
        Some(40 * SEC),
    );
    denied(
        &admit1(&store, &t, &c(5)).await,
        10,
        40 * SEC,
        Some(40 * SEC),
    );
    denied(
        &admit1(&store, &t, &c(6)).await,
        10,
        40 * SEC,
        Some(50 * SEC),
    );
    denied(
        &admit1(&store, &t, &c(10)).await,
        10,
        40 * SEC,
        Some(60 * SEC),
    );
    clock.set_ms(T0 + 60 * SEC);
    assert_eq!(level(&store, &t, &c(1)).await, 5);
    allowed(&admit1(&store, &t, &c(5)).await, 10, 10 * SEC);
}

// ---------------------------------------------------------------------------
// Calendar quotas.

/// A quota of 3 in the period `[start, end)`: the count carries within the
/// period, the last millisecond still belongs to it, and the count resets at
/// `end`, where the next period lasts until `next_end`.
async fn calendar_case<S: CounterStore>(
    store: &S,
    clock: &ManualClock,
    period: Period,
    start: u64,
    end: u64,
    next_end: u64,
) {
    let t = unique_tenant(&format!("cal-{}", period.as_str()));
    let c = Check::new("quota", calendar(period), 3, 1);
    clock.set_ms(start);
    allowed(&admit1(store, &t, &c).await, 1, end - start);
    clock.set_ms(start + (end - start) / 2);
    allowed(
        &admit1(store, &t, &c).await,
        2,
        end - start - (end - start) / 2,
    );
    clock.set_ms(end - 1);
    allowed(&admit1(store, &t, &c).await, 3, 1);
    denied(&admit1(store, &t, &c).await, 3, 1, Some(1));
    let big = Check::new("quota", calendar(period), 3, 4);
    denied(&admit1(store, &t, &big).await, 3, 1, None);
    clock.set_ms(end);
    allowed(&admit1(store, &t, &c).await, 1, next_end - end);
    assert_eq!(level(store, &t, &c).await, 1);
}

/// Hour: 10:00 to 11:00 UTC.
pub async fn calendar_hour<S: CounterStore>(store: S, clock: Arc<ManualClock>) {
    let start = T0 + 10 * HOUR;
    calendar_case(
        &store,
        &clock,
        Period::Hour,
        start,
        start + HOUR,
        start + 2 * HOUR,
    )
    .await;
}

/// Day: Sunday 2026-11-22 to Monday 2026-11-23 (midnight UTC).
pub async fn calendar_day<S: CounterStore>(store: S, clock: Arc<ManualClock>) {
    calendar_case(&store, &clock, Period::Day, T0 - DAY, T0, T0 + DAY).await;
}

/// ISO week: Monday 2026-11-16 to Monday 2026-11-23, across Sunday night.
pub async fn calendar_week<S: CounterStore>(store: S, clock: Arc<ManualClock>) {
    calendar_case(&store, &clock, Period::Week, T0 - 7 * DAY, T0, T0 + 7 * DAY).await;
}

/// Month: January 2024 (Jan 31 -> Feb 1), then a 29-day February.
pub async fn calendar_month_end<S: CounterStore>(store: S, clock: Arc<ManualClock>) {
    let (jan, feb, mar) = (
        1_704_067_200 * SEC,
        1_706_745_600 * SEC,
        1_709_251_200 * SEC,
    );
    calendar_case(&store, &clock, Period::Month, jan, feb, mar).await;
}

/// Month: February 2024, a leap year (Feb 29 -> Mar 1).
pub async fn calendar_leap_february<S: CounterStore>(store: S, clock: Arc<ManualClock>) {
    let (feb, mar, apr) = (
        1_706_745_600 * SEC,
        1_709_251_200 * SEC,
        1_711_929_600 * SEC,
    );
    assert_eq!(mar - feb, 29 * DAY);
    calendar_case(&store, &clock, Period::Month, feb, mar, apr).await;
}

/// Month: February 2026 (Feb 28 -> Mar 1).
pub async fn calendar_february<S: CounterStore>(store: S, clock: Arc<ManualClock>) {
    let (feb, mar, apr) = (
        1_769_904_000 * SEC,
        1_772_323_200 * SEC,
        1_775_001_600 * SEC,
    );
    assert_eq!(mar - feb, 28 * DAY);
    calendar_case(&store, &clock, Period::Month, feb, mar, apr).await;
}

/// Month across the year: December 2025 (Dec 31 -> Jan 1 2026).
pub async fn calendar_year_end<S: CounterStore>(store: S, clock: Arc<ManualClock>) {
    let (dec, jan, feb) = (
        1_764_547_200 * SEC,
        1_767_225_600 * SEC,
        1_769_904_000 * SEC,
    );
    calendar_case(&store, &clock, Period::Month, dec, jan, feb).await;
    // The day and the week roll over on the same night (Thursday Jan 1).
    calendar_case(&store, &clock, Period::Day, jan - DAY, jan, jan + DAY).await;
    let monday = jan - 3 * DAY; // Monday 2025-12-29
    calendar_case(
        &store,
        &clock,
        Period::Week,
        monday,
        monday + 7 * DAY,
        monday + 14 * DAY,
    )
    .await;
}

// ---------------------------------------------------------------------------
// Batches, costs, peek.

/// One denying check consumes nothing in the others; decisions come in
/// order; the allowed checks of a denied batch report `retry_after: None`.
pub async fn batch_all_or_nothing<S: CounterStore>(store: S, clock: Arc<ManualClock>) {
    let t = unique_tenant("batch");
    clock.set_ms(T0 + 30 * SEC);
    let checks = vec![
        Check::new("w", window(60 * SEC), 10, 1),
        Check::new("l", log(60 * SEC), 10, 1),
        Check::new("q", calendar(Period::Day), 10, 1),
        Check::new("c", concurrency(), 10, 1),
        Check::new("g", Algorithm::Gauge, 1, 1),
    ];
    assert_eq!(store.adjust(&t, "g", 1).await.expect("store error"), 1);
    let first = admit(&store, &t, &checks).await;
    assert!(!first.allowed());
    // The sub-bucket window is empty: reset 0, as the log's.
    allowed(&first.decisions[0], 0, 0);
    allowed(&first.decisions[1], 0, 0);
    allowed(&first.decisions[2], 0, DAY - 30 * SEC);
    allowed(&first.decisions[3], 0, 0);
    denied(&first.decisions[4], 1, 0, None);
    for check in &checks[..4] {
        assert_eq!(
            level(&store, &t, check).await,
            0,
            "{check:?} consumed by a denied batch"
        );
    }

    // Without the gauge the batch passes and consumes from every counter.
    let second = admit(&store, &t, &checks[..4]).await;
    assert!(second.allowed());
    assert!(second.lease.is_some());
    // The unit in bucket [T0 + 30 s, T0 + 37.5 s) counts until 37.5 s + W - 1 ms.
    allowed(&second.decisions[0], 1, 67_499);
    allowed(&second.decisions[1], 1, 60 * SEC);
    allowed(&second.decisions[2], 1, DAY - 30 * SEC);
    allowed(&second.decisions[3], 1, 0);

    // The gauge denies again; nothing moves; the first check is last now.
    let mut reordered = checks.clone();
    reordered.rotate_left(1);
    let third = admit(&store, &t, &reordered).await;
    assert!(!third.allowed());
    assert_eq!(third.decisions[0].limit, 10);
    denied(&third.decisions[3], 1, 0, None);
    allowed(&third.decisions[4], 1, 67_499);
    for check in &checks[..4] {
        assert_eq!(level(&store, &t, check).await, 1, "{check:?}");
    }
    drop(second);
    assert_eq!(level(&store, &t, &checks[3]).await, 0, "lease released");

    // A denial by a window check also protects a gauge and a log.
    let full = Check::new("w", window(60 * SEC), 1, 1);
    let gauge = Check::new("g2", Algorithm::Gauge, 10, 1);
    let a = admit(&store, &t, &[gauge.clone(), checks[1].clone(), full]).await;
    assert!(!a.allowed());
    assert!(a.decisions[0].allowed && a.decisions[1].allowed && !a.decisions[2].allowed);
    assert_eq!(level(&store, &t, &gauge).await, 0);
    assert_eq!(level(&store, &t, &checks[1]).await, 1);
    // An empty batch is admitted.
    let empty = admit(&store, &t, &[]).await;
    assert!(empty.allowed() && empty.lease.is_none());
}

/// `cost > limit` is denied with `retry_after: None` and consumes nothing;
/// `limit = 0` denies every positive cost.
pub async fn cost_above_limit<S: CounterStore>(store: S, clock: Arc<ManualClock>) {
    let t = unique_tenant("cost");
    clock.set_ms(T0 + 30 * SEC);
    let algorithms = [
        (window(60 * SEC), 0),
        (approx(60 * SEC), 30 * SEC),
        (log(60 * SEC), 0),
        (calendar(Period::Hour), HOUR - 30 * SEC),
        (concurrency(), 0),
        (Algorithm::Gauge, 0),
    ];
    for (algorithm, reset) in algorithms {
        let c = Check::new("p", algorithm, 5, 6);
        denied(&admit1(&store, &t, &c).await, 0, reset, None);
        assert_eq!(level(&store, &t, &c).await, 0, "{algorithm:?}");
        let zero = Check::new("zero", algorithm, 0, 1);
        denied(&admit1(&store, &t, &zero).await, 0, reset, None);
        // A batch with one impossible check consumes nothing in the others.
        let ok = Check::new("ok", algorithm, 5, 5);
        let a = admit(&store, &t, &[ok.clone(), c.clone()]).await;
        assert!(!a.allowed() && a.decisions[0].allowed);
        assert_eq!(level(&store, &t, &ok).await, 0, "{algorithm:?}");
        // cost == limit passes.
        let a = admit(&store, &t, std::slice::from_ref(&ok)).await;
        assert!(a.allowed(), "{algorithm:?}");
        assert_eq!(a.decisions[0].remaining, 0);
    }
}

/// Cost 0 always passes while `used <= limit`, consumes nothing and takes
/// no lease.
pub async fn zero_cost<S: CounterStore>(store: S, clock: Arc<ManualClock>) {
    let t = unique_tenant("zero");
    clock.set_ms(T0);
    for algorithm in [
        window(SEC),
        log(SEC),
        calendar(Period::Day),
        concurrency(),
        Algorithm::Gauge,
    ] {
        let c = Check::new("p", algorithm, 1, 0);
        let a = admit(&store, &t, std::slice::from_ref(&c)).await;
        assert!(a.allowed() && a.lease.is_none(), "{algorithm:?}");
        assert_eq!(a.decisions[0].used, 0);
        let one = Check::new("p", algorithm, 1, 1);
        let held = admit(&store, &t, std::slice::from_ref(&one)).await;
        assert!(held.allowed());
        let a = admit(&store, &t, std::slice::from_ref(&c)).await;
        assert!(a.allowed(), "{algorithm:?}: used == limit, cost 0");
        assert_eq!((a.decisions[0].used, a.decisions[0].remaining), (1, 0));
    }
}

/// `peek` answers exactly what `admit` would, consumes nothing, takes no
/// lease.
pub async fn peek_consumes_nothing<S: CounterStore>(store: S, clock: Arc<ManualClock>) {
    let t = unique_tenant("peek");
    clock.set_ms(T0 + 5 * SEC);
    let checks = [
        Check::new("w", window(60 * SEC), 2, 1),
        Check::new("l", log(60 * SEC), 2, 1),
        Check::new("q", calendar(Period::Month), 2, 1),
        Check::new("c", concurrency(), 2, 1),
        Check::new("g", Algorithm::Gauge, 2, 1),
    ];
    for _ in 0..5 {
        let p = peek(&store, &t, &checks).await;
        assert!(p.iter().all(|d| d.allowed && d.used == 1));
    }
    let mut leases = Vec::new();
    for round in 1..=3 {
        let p = peek(&store, &t, &checks).await;
        let a = admit(&store, &t, &checks).await;
        assert_eq!(p, a.decisions.to_vec(), "round {round}");
        assert_eq!(a.allowed(), round <= 2);
        leases.push(a.lease);
    }
    for check in &checks {
        assert_eq!(level(&store, &t, check).await, 2, "{check:?}");
    }
    // Peeking a single check matches too.
    for check in &checks {
        let p = peek(&store, &t, std::slice::from_ref(check)).await;
        assert_eq!(p[0], admit1(&store, &t, check).await);
    }
}

// ---------------------------------------------------------------------------
// Concurrency and gauges.

/// Units are held until the lease is dropped; denial: `reset = 0`,
/// `retry_after = 1 s`.
pub async fn concurrency_lease<S: CounterStore>(store: S, clock: Arc<ManualClock>) {
    let t = unique_tenant("conc");
    clock.set_ms(T0);
    let c = |cost| Check::new("inflight", concurrency(), 2, cost);
    let a1 = admit(&store, &t, &[c(1)]).await;
    allowed(&a1.decisions[0], 1, 0);
    assert!(a1.lease.is_some());
    let a2 = admit(&store, &t, &[c(1)]).await;
    allowed(&a2.decisions[0], 2, 0);
    denied(&admit1(&store, &t, &c(1)).await, 2, 0, Some(SEC));
    denied(&admit1(&store, &t, &c(3)).await, 2, 0, None);
    drop(a1);
    let a3 = admit(&store, &t, &[c(1)]).await;
    allowed(&a3.decisions[0], 2, 0);
    // Time does not free slots.
    clock.advance_ms(DAY);
    denied(&admit1(&store, &t, &c(1)).await, 2, 0, Some(SEC));
    drop((a2, a3));
    assert_eq!(level(&store, &t, &c(1)).await, 0);
    // A lease of 2 units releases both.
    let two = admit(&store, &t, &[c(2)]).await;
    allowed(&two.decisions[0], 2, 0);
    denied(&admit1(&store, &t, &c(1)).await, 2, 0, Some(SEC));
    drop(two);
    // One lease for two concurrency counters.
    let other = Check::new("other", concurrency(), 1, 1);
    let both = admit(&store, &t, &[c(1), other.clone()]).await;
    assert!(both.allowed());
    assert_eq!(level(&store, &t, &other).await, 1);
    let lease = both.lease.expect("lease");
    assert_eq!(level(&store, &t, &c(1)).await, 1);
    drop(lease);
    assert_eq!(level(&store, &t, &c(1)).await, 0);
    assert_eq!(level(&store, &t, &other).await, 0);
}

/// `adjust` moves a gauge and saturates at 0 (and at `u64::MAX`); admission
/// adds `cost`; denial: `reset = 0`, `retry_after = None`; gauges never
/// expire.
pub async fn gauge_adjust<S: CounterStore>(store: S, clock: Arc<ManualClock>) {
    let t = unique_tenant("gauge");
    clock.set_ms(T0);
    let g = |cost| Check::new("workflows", Algorithm::Gauge, 5, cost);
    assert_eq!(store.adjust(&t, "workflows", 3).await.unwrap(), 3);
    assert_eq!(level(&store, &t, &g(1)).await, 3);
    allowed(&admit1(&store, &t, &g(2)).await, 5, 0);
    denied(&admit1(&store, &t, &g(1)).await, 5, 0, None);
    assert_eq!(store.adjust(&t, "workflows", -1).await.unwrap(), 4);
    allowed(&admit1(&store, &t, &g(1)).await, 5, 0);
    assert_eq!(store.adjust(&t, "workflows", -7).await.unwrap(), 0);
    assert_eq!(store.adjust(&t, "workflows", -1).await.unwrap(), 0);
    assert_eq!(store.adjust(&t, "workflows", 0).await.unwrap(), 0);
    assert_eq!(level(&store, &t, &g(1)).await, 0);
    // Never expires.
    assert_eq!(store.adjust(&t, "workflows", 2).await.unwrap(), 2);
    clock.advance_ms(400 * DAY);
    assert_eq!(level(&store, &t, &g(1)).await, 2);
    // A gauge never touched, driven down first.
    assert_eq!(store.adjust(&t, "fresh", -5).await.unwrap(), 0);
    assert_eq!(store.adjust(&t, "fresh", 1).await.unwrap(), 1);
    assert_eq!(store.adjust(&t, "fresh", i64::MIN).await.unwrap(), 0);
}

// ---------------------------------------------------------------------------
// Time that does not behave.

/// The clock steps back 20 s (an NTP correction; a failover to a Redis
/// whose clock lags) after 3 admissions, then returns: the store keeps
/// answering, forgets nothing, and over the whole scenario — less than one
/// window or period long — admits no more than the limit (round towards
/// refusing). Once the clock has moved past the window, requests pass
/// again. Each rate algorithm steps back both within its fixed window and
/// across a window boundary; the calendar within a period.
pub async fn clock_goes_backwards<S: CounterStore>(store: S, clock: Arc<ManualClock>) {
    let w = 60 * SEC;
    let hour = T0 + 10 * HOUR;
    // (what, algorithm, the instant of the step, an instant where the
    // counter is free again: two windows later, or the next period)
    let cases = [
        (
            "window, back within its fixed window",
            window(w),
            hour + 30 * SEC,
            hour + 30 * SEC + 2 * w + SEC,
        ),
        (
            "window, back across a window boundary",
            window(w),
            hour + 10 * SEC,
            hour + 10 * SEC + 2 * w + SEC,
        ),
        (
            "two-counter window, back within its fixed window",
            approx(w),
            hour + 30 * SEC,
            hour + 30 * SEC + 2 * w + SEC,
        ),
        (
            "two-counter window, back across a window boundary",
            approx(w),
            hour + 10 * SEC,
            hour + 10 * SEC + 2 * w + SEC,
        ),
        (
            "log, back within a window",
            log(w),
            hour + 30 * SEC,
            hour + 30 * SEC + w + SEC,
        ),
        (
            "log, back across a window boundary",
            log(w),
            hour + 10 * SEC,
            hour + 10 * SEC + w + SEC,
        ),
        (
            "calendar hour",
            calendar(Period::Hour),
            hour + 30 * 60 * SEC,
            hour + HOUR,
        ),
        ("calendar day", calendar(Period::Day), hour, T0 + DAY),
    ];
    for (what, algorithm, at, later) in cases {
        let t = unique_tenant("backwards");
        let c = Check::new("calls", algorithm, 5, 1);
        let mut admitted = 0;
        let mut step = |d: Decision, when: &str| {
            assert!(d.used <= d.limit, "{what}, {when}: {d:?}");
            assert_eq!(d.remaining, d.limit - d.used, "{what}, {when}: {d:?}");
            admitted += u64::from(d.allowed);
        };
        clock.set_ms(at);
        for _ in 0..3 {
            let d = admit1(&store, &t, &c).await;
            assert!(d.allowed, "{what}: {d:?}");
            step(d, "before");
        }
        clock.set_ms(at - 20 * SEC);
        for _ in 0..6 {
            let d = admit1(&store, &t, &c).await;
            step(d, "20 s back");
        }
        let seen = level(&store, &t, &c).await;
        assert!(
            seen >= 3,
            "{what}: the 3 units before the step are forgotten ({seen})"
        );
        for now in [at - SEC, at, at + SEC] {
            clock.set_ms(now);
            for _ in 0..3 {
                let d = admit1(&store, &t, &c).await;
                step(d, "back to time");
            }
        }
        assert!(
            (3..=5).contains(&admitted),
            "{what}: {admitted} admitted within 21 s, limit 5"
        );
        // Past the window (a sliding window may wait up to two), or in the
        // next period: admitted again.
        clock.set_ms(later);
        let d = admit1(&store, &t, &c).await;
        assert!(d.allowed, "{what}, later: {d:?}");
    }
}

/// The first request of a tenant 1 ms before a period starts counts in the
/// ending period (reset 1 ms); the next one, at the start, in a fresh one.
pub async fn calendar_first_request_1ms_before_a_period<S: CounterStore>(
    store: S,
    clock: Arc<ManualClock>,
) {
    // Each period starts at T0 (Monday 2026-11-23, 00:00 UTC) except the
    // month, which starts on 2026-12-01.
    let december = 1_796_083_200 * SEC;
    for (period, start, end) in [
        (Period::Hour, T0, T0 + HOUR),
        (Period::Day, T0, T0 + DAY),
        (Period::Week, T0, T0 + 7 * DAY),
        (Period::Month, december, 1_798_761_600 * SEC),
    ] {
        let t = unique_tenant("cal-edge");
        let c = Check::new("quota", calendar(period), 1, 1);
        clock.set_ms(start - 1);
        allowed(&admit1(&store, &t, &c).await, 1, 1);
        denied(&admit1(&store, &t, &c).await, 1, 1, Some(1));
        clock.set_ms(start);
        allowed(&admit1(&store, &t, &c).await, 1, end - start);
        denied(
            &admit1(&store, &t, &c).await,
            1,
            end - start,
            Some(end - start),
        );
    }
}

/// Counters are keyed by (tenant, algorithm kind, policy).
pub async fn isolation<S: CounterStore>(store: S, clock: Arc<ManualClock>) {
    let (a, b) = (unique_tenant("iso-a"), unique_tenant("iso-b"));
    clock.set_ms(T0);
    let kinds = [
        window(60 * SEC),
        log(60 * SEC),
        calendar(Period::Day),
        Algorithm::Gauge,
    ];
    for kind in kinds {
        let c = Check::new("p", kind, 1, 1);
        assert!(admit1(&store, &a, &c).await.allowed, "{kind:?}");
        assert!(!admit1(&store, &a, &c).await.allowed, "{kind:?}");
        assert!(
            admit1(&store, &b, &c).await.allowed,
            "{kind:?}: other tenant"
        );
        let other_policy = Check::new("q", kind, 1, 1);
        assert!(
            admit1(&store, &a, &other_policy).await.allowed,
            "{kind:?}: other policy"
        );
    }
    let c = Check::new("p", concurrency(), 1, 1);
    let held = admit(&store, &a, std::slice::from_ref(&c)).await;
    assert!(held.allowed(), "the same policy name in another kind");
    assert!(admit(&store, &b, &[c]).await.allowed());
}

// ---------------------------------------------------------------------------
// Concurrent callers.

const TASKS: usize = 64;
const CALLS: usize = 40;

async fn race<S: CounterStore>(store: &Arc<S>, tenant: &TenantId, checks: &[Check]) -> usize {
    let mut tasks = Vec::with_capacity(TASKS);
    for _ in 0..TASKS {
        let (store, tenant, checks) = (store.clone(), tenant.clone(), checks.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut admitted = Vec::new();
            for _ in 0..CALLS {
                let a = store.admit(&tenant, &checks).await.expect("store error");
                if a.allowed() {
                    admitted.push(a.lease); // held until every task is done
                }
                tokio::task::yield_now().await;
            }
            admitted
        }));
    }
    let mut held = Vec::new();
    for task in tasks {
        held.extend(task.await.expect("task panicked"));
    }
    held.len()
}

/// 64 tasks × 40 calls against a limit of 100: every exact algorithm (and
/// the sliding window while the clock stands still) admits exactly 100.
pub async fn concurrent_exact<S: CounterStore>(store: S, clock: Arc<ManualClock>) {
    let store = Arc::new(store);
    clock.set_ms(T0 + 1);
    let algorithms = [
        window(HOUR),
        log(HOUR),
        calendar(Period::Day),
        concurrency(),
        Algorithm::Gauge,
    ];
    for algorithm in algorithms {
        let t = unique_tenant("race");
        let c = Check::new("p", algorithm, 100, 1);
        assert_eq!(
            race(&store, &t, std::slice::from_ref(&c)).await,
            100,
            "{algorithm:?}"
        );
        if !matches!(algorithm, Algorithm::Concurrency { .. }) {
            assert_eq!(level(&*store, &t, &c).await, 100, "{algorithm:?}");
        }
    }
}

/// Concurrent batches: each counter of the batch ends exactly at the limit
/// of the tightest one.
pub async fn concurrent_batches<S: CounterStore>(store: S, clock: Arc<ManualClock>) {
    let store = Arc::new(store);
    clock.set_ms(T0 + 1);
    let t = unique_tenant("race-batch");
    let checks = [
        Check::new("l", log(HOUR), 90, 1),
        Check::new("q", calendar(Period::Day), 50, 1),
        Check::new("g", Algorithm::Gauge, 1_000, 2),
        Check::new("c", concurrency(), 1_000, 1),
    ];
    assert_eq!(race(&store, &t, &checks).await, 50);
    assert_eq!(level(&*store, &t, &checks[0]).await, 50);
    assert_eq!(level(&*store, &t, &checks[1]).await, 50);
    assert_eq!(level(&*store, &t, &checks[2]).await, 100);
    assert_eq!(level(&*store, &t, &checks[3]).await, 0, "leases released");
}

// ---------------------------------------------------------------------------
// Not in `run_all`.

/// Extreme inputs: zero and huge windows, `u64::MAX` limits and costs, the
/// clock at 0 and near `u64::MAX`. The store must answer (no panic) with
/// consistent decisions.
pub async fn extreme_values<S: CounterStore>(store: S, clock: Arc<ManualClock>) {
    let t = unique_tenant("extreme");
    let algorithms = [
        window(0),
        log(0),
        Algorithm::SlidingWindow {
            window: Duration::MAX,
        },
        Algorithm::SlidingLog {
            window: Duration::MAX,
        },
        calendar(Period::Hour),
        calendar(Period::Week),
        calendar(Period::Month),
        concurrency(),
        Algorithm::Gauge,
    ];
    for now in [0, 1, T0, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
        clock.set_ms(now);
        for algorithm in algorithms {
            for (limit, cost) in [
                (u64::MAX, u64::MAX),
                (u64::MAX, 1),
                (u64::MAX - 1, u64::MAX),
                (0, 0),
                (1, 0),
            ] {
                let c = Check::new(format!("p{limit}-{cost}"), algorithm, limit, cost);
                let p = peek(&store, &t, std::slice::from_ref(&c)).await;
                let a = admit(&store, &t, std::slice::from_ref(&c)).await;
                let d = a.decisions[0];
                assert_eq!(d.limit, limit);
                assert!(d.used <= limit || !d.allowed, "{algorithm:?} {now} {d:?}");
                if cost > limit {
                    assert!(!d.allowed && d.retry_after.is_none());
                }
                assert!(p[0].allowed || !d.allowed);
            }
        }
        assert_eq!(
            store.adjust(&t, "big", i64::MAX).await.unwrap(),
            i64::MAX as u64
        );
        assert_eq!(
            store.adjust(&t, "big", i64::MAX).await.unwrap(),
            u64::MAX - 1
        );
        assert_eq!(store.adjust(&t, "big", i64::MAX).await.unwrap(), u64::MAX);
        assert_eq!(
            store.adjust(&t, "big", i64::MIN).await.unwrap(),
            u64::MAX - (1 << 63)
        );
        assert_eq!(store.adjust(&t, "big", i64::MIN).await.unwrap(), 0);
    }
}
