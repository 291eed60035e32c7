//! The memory store's admit path allocates nothing once a counter exists
//! (issue 11: 0 allocations on the store's admit path), for every rate
//! algorithm, a batch of several checks, a denial and a dry run. Counted on
//! the test's own thread (the path is synchronous): the harness's threads
//! allocate at moments of their own, which once failed CI on a busy machine.

#[path = "common/counting_alloc.rs"]
mod counting_alloc;

use std::sync::Arc;
use std::time::Duration;

use tower_tenancy::store::{Algorithm, Check, CounterStore, ManualClock, MemoryStore};
use tower_tenancy::{Period, TenantId};

#[test]
fn admit_allocates_nothing_for_existing_counters() {
    // The counter sees this thread's allocations.
    let before = counting_alloc::allocations_on_this_thread();
    drop(std::hint::black_box(Box::new(1u8)));
    assert_eq!(counting_alloc::allocations_on_this_thread() - before, 1);
    let clock = Arc::new(ManualClock::new(1_795_392_000_000));
    let store = MemoryStore::builder()
        .clock(clock.clone())
        .sweep_every(0)
        .build();
    let tenant: TenantId = "acme".parse().unwrap();
    let w = Duration::from_secs(60);
    let single = |algorithm| [Check::new("api", algorithm, 1_000_000, 1)];
    let batch = [
        Check::new("a", Algorithm::SlidingWindow { window: w }, 1_000_000, 1),
        Check::new(
            "b",
            Algorithm::Gcra {
                window: w,
                burst: 1_000_000,
            },
            1_000_000,
            1,
        ),
        Check::new(
            "c",
            Algorithm::Calendar {
                period: Period::Day,
            },
            1_000_000,
            1,
        ),
        Check::new(
            "d",
            Algorithm::SlidingWindowApprox { window: w },
            1_000_000,
            1,
        ),
    ];
    let cases: Vec<(&str, Vec<Check>)> = vec![
        (
            "sliding window",
            single(Algorithm::SlidingWindow { window: w }).to_vec(),
        ),
        (
            "two-counter window",
            single(Algorithm::SlidingWindowApprox { window: w }).to_vec(),
        ),
        (
            "gcra",
            single(Algorithm::Gcra {
                window: w,
                burst: 10,
            })
            .to_vec(),
        ),
        (
            "calendar",
            single(Algorithm::Calendar {
                period: Period::Day,
            })
            .to_vec(),
        ),
        ("batch of four", batch.to_vec()),
    ];
    for (what, checks) in &cases {
        // The first call creates the counters.
        let first = store.admit(&tenant, checks).try_take().unwrap().unwrap();
        assert!(first.allowed(), "{what}");
        for step in 0..100u64 {
            clock.advance_ms(step % 3 * 500);
            let before = counting_alloc::allocations_on_this_thread();
            let a = store.admit(&tenant, checks).try_take().unwrap().unwrap();
            let p = store.peek(&tenant, checks).try_take().unwrap().unwrap();
            let allocated = counting_alloc::allocations_on_this_thread() - before;
            assert_eq!(
                allocated, 0,
                "{what}: {allocated} allocations at step {step}"
            );
            assert_eq!(a.decisions.len(), checks.len());
            drop((a, p));
        }
    }
    // Denials allocate nothing either (20 at one instant, burst 10).
    let gcra = &cases[2].1;
    let before = counting_alloc::allocations_on_this_thread();
    let mut denied = 0;
    for _ in 0..20 {
        let a = store.admit(&tenant, gcra).try_take().unwrap().unwrap();
        denied += usize::from(!a.allowed());
    }
    assert_eq!(
        counting_alloc::allocations_on_this_thread() - before,
        0,
        "denials"
    );
    assert!(
        denied >= 10,
        "{denied} denied of 20 at one instant, burst 10"
    );
}
