//! Rate-algorithm conformance: the sub-bucket sliding window and GCRA as
//! `src/store/mod.rs` specifies them, with the numbers worked out by hand,
//! written once and run against every [`CounterStore`] (memory, Redis,
//! Redis Cluster, `ResilientStore`) by `tests/rate_algorithms.rs`.
//!
//! Every scenario has the signature
//! `pub async fn name<S: CounterStore>(store: S, clock: Arc<ManualClock>)`
//! and uses tenant ids with a random suffix (see `conformance.rs`).
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tower_tenancy::store::{Algorithm, Check, CounterStore, Decision, ManualClock};

use crate::conformance::{unique_tenant, T0};

/// Runs every scenario, each with a fresh store from `make` on a fresh clock.
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
        sub_bucket_window,
        sub_bucket_costs_and_uneven_buckets,
        gcra_burst_and_rate,
        gcra_burst_above_limit,
        gcra_interval_in_nanoseconds,
    );
}

fn window(ms: u64) -> Algorithm {
    Algorithm::SlidingWindow {
        window: Duration::from_millis(ms),
    }
}

fn gcra(ms: u64, burst: u64) -> Algorithm {
    Algorithm::Gcra {
        window: Duration::from_millis(ms),
        burst,
    }
}

async fn admit1<S: CounterStore>(
    store: &S,
    tenant: &tower_tenancy::TenantId,
    c: &Check,
) -> Decision {
    let a = store
        .admit(tenant, std::slice::from_ref(c))
        .await
        .expect("store error");
    a.decisions[0]
}

async fn peek1<S: CounterStore>(
    store: &S,
    tenant: &tower_tenancy::TenantId,
    c: &Check,
) -> Decision {
    store
        .peek(tenant, std::slice::from_ref(c))
        .await
        .expect("store error")[0]
}

/// `(allowed, used, remaining, reset ms, retry ms)` of a decision.
fn parts(d: &Decision) -> (bool, u64, u64, u64, Option<u64>) {
    (
        d.allowed,
        d.used,
        d.remaining,
        d.reset.as_millis() as u64,
        d.retry_after.map(|r| r.as_millis() as u64),
    )
}

// ---------------------------------------------------------------------------
// Sub-bucket sliding window.

/// W = 8 s, limit 5: buckets of 1 s. Units admitted at 0.5 s count until
/// 8.999 s (their bucket [0, 1 s) leaves at (0+1)·1 s + W − 1 ms), which
/// is up to one bucket longer than the exact log would count them.
pub async fn sub_bucket_window<S: CounterStore>(store: S, clock: Arc<ManualClock>) {
    let t = unique_tenant("sb");
    let c = Check::new("calls", window(8_000), 5, 1);
    clock.set_ms(T0 + 500);
    for used in 1..=3 {
        assert_eq!(
            parts(&admit1(&store, &t, &c).await),
            (true, used, 5 - used, 8_499, None)
        );
    }
    clock.set_ms(T0 + 3_200);
    for used in 4..=5 {
        assert_eq!(
            parts(&admit1(&store, &t, &c).await),
            (true, used, 5 - used, 5_799, None)
        );
    }
    // Full: the 3 units of bucket 0 free one unit at 8.999 s.
    assert_eq!(
        parts(&admit1(&store, &t, &c).await),
        (false, 5, 0, 5_799, Some(5_799))
    );
    // The exact log would admit from 8.5 s; the window counts bucket 0 until 8.999 s.
    clock.set_ms(T0 + 8_998);
    assert_eq!(
        parts(&admit1(&store, &t, &c).await),
        (false, 5, 0, 1, Some(1))
    );
    clock.set_ms(T0 + 8_999);
    // Bucket 3 (3.2 s) is now the oldest: it leaves at 4 s + 7.999 s.
    assert_eq!(
        parts(&admit1(&store, &t, &c).await),
        (true, 3, 2, 3_000, None)
    );
    assert_eq!(
        parts(&peek1(&store, &t, &Check::new("calls", window(8_000), 5, 0)).await),
        (true, 3, 2, 3_000, None)
    );
    // Everything left: nothing counted.
    clock.set_ms(T0 + 16_999);
    assert_eq!(
        parts(&peek1(&store, &t, &Check::new("calls", window(8_000), 5, 0)).await),
        (true, 0, 5, 0, None)
    );
}

/// Costs above 1, a window that is not a multiple of 8 (W = 9.999 s:
/// buckets of 1.25 s), and a retry that needs several buckets. (Windows
/// and intervals here are seconds long: Redis expires keys in real time.)
pub async fn sub_bucket_costs_and_uneven_buckets<S: CounterStore>(
    store: S,
    clock: Arc<ManualClock>,
) {
    let t = unique_tenant("sb-cost");
    let c = |cost| Check::new("calls", window(9_999), 10, cost);
    // Buckets [0, 1.25 s): 3 units, [1.25, 2.5 s): 4, [3.75, 5 s): 2. Bucket
    // j leaves at (j+1)·1.25 s + 9.998 s: the first at 11.248 s.
    clock.set_ms(T0);
    assert_eq!(
        parts(&admit1(&store, &t, &c(3)).await),
        (true, 3, 7, 11_248, None)
    );
    clock.set_ms(T0 + 1_300);
    assert_eq!(
        parts(&admit1(&store, &t, &c(4)).await),
        (true, 7, 3, 9_948, None)
    );
    clock.set_ms(T0 + 3_800);
    assert_eq!(
        parts(&admit1(&store, &t, &c(2)).await),
        (true, 9, 1, 7_448, None)
    );
    // cost 5: need 9 − 5 = 4 units freed: buckets 0 and 1 (3 + 4), the
    // second leaves at 12.498 s.
    assert_eq!(
        parts(&admit1(&store, &t, &c(5)).await),
        (false, 9, 1, 7_448, Some(8_698))
    );
    // cost 3: need 2: bucket 0 alone (3 units) leaves at 11.248 s.
    assert_eq!(
        parts(&admit1(&store, &t, &c(3)).await),
        (false, 9, 1, 7_448, Some(7_448))
    );
    clock.set_ms(T0 + 11_248);
    assert_eq!(
        parts(&admit1(&store, &t, &c(3)).await),
        (true, 9, 1, 1_250, None)
    );
    // cost above the limit: never.
    assert_eq!(
        parts(&admit1(&store, &t, &c(11)).await),
        (false, 9, 1, 1_250, None)
    );
}

// ---------------------------------------------------------------------------
// GCRA.

/// 10 per 10 s (T = 1 s), burst 3 (capacity 3 s).
pub async fn gcra_burst_and_rate<S: CounterStore>(store: S, clock: Arc<ManualClock>) {
    let t = unique_tenant("gc");
    let c = |cost| Check::new("calls", gcra(10_000, 3), 10, cost);
    clock.set_ms(T0);
    // (allowed, used, remaining, reset = until full, retry); limit = burst.
    assert_eq!(
        parts(&admit1(&store, &t, &c(1)).await),
        (true, 1, 2, 1_000, None)
    );
    assert_eq!(
        parts(&admit1(&store, &t, &c(1)).await),
        (true, 2, 1, 2_000, None)
    );
    let d = admit1(&store, &t, &c(1)).await;
    assert_eq!(parts(&d), (true, 3, 0, 3_000, None));
    assert_eq!(d.limit, 3, "GCRA reports the burst");
    assert_eq!(
        parts(&admit1(&store, &t, &c(1)).await),
        (false, 3, 0, 3_000, Some(1_000))
    );
    clock.set_ms(T0 + 1_500);
    assert_eq!(
        parts(&admit1(&store, &t, &c(1)).await),
        (true, 3, 0, 2_500, None)
    );
    assert_eq!(
        parts(&admit1(&store, &t, &c(1)).await),
        (false, 3, 0, 2_500, Some(500))
    );
    // Full again after 2.5 s.
    clock.set_ms(T0 + 4_000);
    assert_eq!(
        parts(&peek1(&store, &t, &c(0)).await),
        (true, 0, 3, 0, None)
    );
    assert_eq!(
        parts(&admit1(&store, &t, &c(3)).await),
        (true, 3, 0, 3_000, None)
    );
    // Above the burst: never.
    assert_eq!(
        parts(&admit1(&store, &t, &c(4)).await),
        (false, 3, 0, 3_000, None)
    );
    // Two units wait for 2 s.
    assert_eq!(
        parts(&admit1(&store, &t, &c(2)).await),
        (false, 3, 0, 3_000, Some(2_000))
    );
}

/// A burst above the rate's limit: 2 per 10 s (T = 5 s), burst 5.
pub async fn gcra_burst_above_limit<S: CounterStore>(store: S, clock: Arc<ManualClock>) {
    let t = unique_tenant("gc-burst");
    let c = |cost| Check::new("calls", gcra(10_000, 5), 2, cost);
    clock.set_ms(T0);
    assert_eq!(
        parts(&admit1(&store, &t, &c(5)).await),
        (true, 5, 0, 25_000, None)
    );
    assert_eq!(
        parts(&admit1(&store, &t, &c(1)).await),
        (false, 5, 0, 25_000, Some(5_000))
    );
    clock.set_ms(T0 + 10_000);
    assert_eq!(
        parts(&admit1(&store, &t, &c(2)).await),
        (true, 5, 0, 25_000, None)
    );
}

/// 3 per 10 s: T = ceil(10¹⁰ / 3) ns = 3 333.333334 ms, kept to the
/// nanosecond (in Redis as ms + ns) and rounded up to the ms when reported.
pub async fn gcra_interval_in_nanoseconds<S: CounterStore>(store: S, clock: Arc<ManualClock>) {
    let t = unique_tenant("gc-ns");
    let c = Check::new("calls", gcra(10_000, 1), 3, 1);
    clock.set_ms(T0);
    assert_eq!(
        parts(&admit1(&store, &t, &c).await),
        (true, 1, 0, 3_334, None)
    );
    assert_eq!(
        parts(&admit1(&store, &t, &c).await),
        (false, 1, 0, 3_334, Some(3_334))
    );
    clock.set_ms(T0 + 3_333);
    // 0.333334 ms left: reported as 1 ms.
    assert_eq!(
        parts(&admit1(&store, &t, &c).await),
        (false, 1, 0, 1, Some(1))
    );
    clock.set_ms(T0 + 3_334);
    // tat was T0 + 3 333.333334 ms: admitted; tat = T0 + 6 667.333334 ms.
    assert_eq!(
        parts(&admit1(&store, &t, &c).await),
        (true, 1, 0, 3_334, None)
    );
    clock.set_ms(T0 + 6_667);
    assert_eq!(
        parts(&admit1(&store, &t, &c).await),
        (false, 1, 0, 1, Some(1))
    );
    clock.set_ms(T0 + 6_668);
    assert_eq!(
        parts(&admit1(&store, &t, &c).await),
        (true, 1, 0, 3_334, None)
    );
}
