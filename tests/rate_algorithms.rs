//! Rate algorithms (issue 12): the sub-bucket sliding window and GCRA.
//!
//! * `rate_conformance.rs` over the memory store, a real Redis, a real Redis
//!   Cluster and a `ResilientStore` over Redis;
//! * four store instances on one Redis, a burst straddling a window
//!   boundary: exactly the limit (the two-counter window, as a control,
//!   admits 102 of a limit of 100);
//! * property tests: the sub-bucket window against brute force on random
//!   traces (never over the limit in any window-long span; never refuses
//!   what a window one bucket longer would admit), GCRA against the governor
//!   crate as the oracle, the sliding log against brute force.

#[path = "common/conformance.rs"]
mod conformance;
#[path = "common/rate_conformance.rs"]
mod rate_conformance;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tower_tenancy::store::{Algorithm, Check, Clock, CounterStore, ManualClock, MemoryStore};
use tower_tenancy::TenantId;

#[tokio::test]
async fn conformance_memory() {
    rate_conformance::run_all(|clock| async move { MemoryStore::with_clock(clock) }).await;
}

/// Admits one check in the memory store (which answers synchronously).
fn admit(store: &MemoryStore, tenant: &TenantId, check: &Check) -> tower_tenancy::store::Decision {
    store
        .admit(tenant, std::slice::from_ref(check))
        .try_take()
        .expect("ready")
        .expect("ok")
        .decisions[0]
}

/// Units admitted in `(from, to]` of `log` (times in ms, units).
fn units_in(log: &[(u64, u64)], from: u64, to: u64) -> u64 {
    log.iter()
        .filter(|&&(t, _)| t > from && t <= to)
        .map(|&(_, n)| n)
        .sum()
}

const T0: u64 = conformance::T0;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The sub-bucket window against brute force over its own admissions:
    /// before each admission the last `W` held at most `limit − cost`
    /// (never over the limit in any window-long span), and each refusal
    /// (of a cost the limit allows) is justified by the last `W + b − 1` ms
    /// (the error is at most one bucket of time, towards refusing).
    #[test]
    fn sub_buckets_within_one_bucket_of_exact(
        w in 1u64..20_000,
        limit in 1u64..40,
        steps in proptest::collection::vec((0u64..4_000, 1u64..5), 1..300),
    ) {
        let clock = Arc::new(ManualClock::new(T0 + 3));
        let store = MemoryStore::builder().shards(1).sweep_every(7).clock(clock.clone()).build();
        let t: TenantId = "t".parse().unwrap();
        let b = w.div_ceil(8);
        let mut admitted: Vec<(u64, u64)> = Vec::new();
        for (dt, cost) in steps {
            clock.advance_ms(dt % (2 * w + 1));
            let now = clock.now_ms();
            let d = admit(&store, &t, &Check::new("w", Algorithm::SlidingWindow { window: Duration::from_millis(w) }, limit, cost));
            let exact = units_in(&admitted, now - w, now);
            let extended = units_in(&admitted, now.saturating_sub(w + b - 1), now);
            if d.allowed {
                prop_assert!(exact + cost <= limit, "admitted above the limit: {} + {} > {}", exact, cost, limit);
                admitted.push((now, cost));
            } else if cost <= limit {
                prop_assert!(extended + cost > limit, "refused beyond one bucket: {} + {} <= {}", extended, cost, limit);
                prop_assert!(d.used >= exact && d.used <= extended);
            }
        }
    }

    /// The sliding log is exact: every decision equals brute force.
    #[test]
    fn sliding_log_is_exact(
        w in 1u64..20_000,
        limit in 1u64..40,
        steps in proptest::collection::vec((0u64..4_000, 1u64..5), 1..300),
    ) {
        let clock = Arc::new(ManualClock::new(T0 + 3));
        let store = MemoryStore::builder().shards(1).sweep_every(7).clock(clock.clone()).build();
        let t: TenantId = "t".parse().unwrap();
        let mut admitted: Vec<(u64, u64)> = Vec::new();
        for (dt, cost) in steps {
            clock.advance_ms(dt % (2 * w + 1));
            let now = clock.now_ms();
            let d = admit(&store, &t, &Check::new("l", Algorithm::SlidingLog { window: Duration::from_millis(w) }, limit, cost));
            let exact = units_in(&admitted, now - w, now);
            prop_assert_eq!(d.allowed, exact + cost <= limit);
            if d.allowed {
                admitted.push((now, cost));
            }
        }
    }

    /// GCRA decides as governor 0.10 does for the same quota
    /// (`Quota::with_period(T).allow_burst(B)`, `T = ceil(W / limit)`) on
    /// random arrivals: the same admissions, `remaining` = governor's
    /// `remaining_burst_capacity`, `retry_after` = governor's wait rounded
    /// up to the millisecond, never for a cost above the burst.
    #[test]
    fn gcra_matches_governor(
        w in 1u64..20_000,
        limit in 1u64..60,
        burst in 1u32..40,
        steps in proptest::collection::vec((0u64..3_000, 1u32..8), 1..300),
    ) {
        use governor::clock::FakeRelativeClock;
        use governor::middleware::StateInformationMiddleware;
        use governor::{Quota, RateLimiter};

        let period_ns = (u128::from(w) * 1_000_000).div_ceil(u128::from(limit)) as u64;
        let quota = Quota::with_period(Duration::from_nanos(period_ns))
            .unwrap()
            .allow_burst(NonZeroU32::new(burst).unwrap());
        let gclock = FakeRelativeClock::default();
        let governor = RateLimiter::direct_with_clock(quota, gclock.clone())
            .with_middleware::<StateInformationMiddleware>();

        let clock = Arc::new(ManualClock::new(T0));
        let store = MemoryStore::builder().shards(1).sweep_every(5).clock(clock.clone()).build();
        let t: TenantId = "t".parse().unwrap();
        let check = |n: u32| Check::new(
            "g",
            Algorithm::Gcra { window: Duration::from_millis(w), burst: u64::from(burst) },
            limit,
            u64::from(n),
        );
        for (dt, n) in steps {
            let dt = dt % (2 * w + 1);
            clock.advance_ms(dt);
            gclock.advance(Duration::from_millis(dt));
            let ours = admit(&store, &t, &check(n));
            match governor.check_n(NonZeroU32::new(n).unwrap()) {
                Ok(Ok(snapshot)) => {
                    prop_assert!(ours.allowed, "governor admits {}", n);
                    prop_assert_eq!(ours.remaining, u64::from(snapshot.remaining_burst_capacity()));
                }
                Ok(Err(not_until)) => {
                    prop_assert!(!ours.allowed, "governor refuses {}", n);
                    let wait = not_until.wait_time_from(governor::clock::Clock::now(&gclock));
                    let ms = (wait.as_nanos().div_ceil(1_000_000)) as u64;
                    prop_assert_eq!(ours.retry_after, Some(Duration::from_millis(ms)));
                }
                Err(_insufficient) => {
                    prop_assert!(!ours.allowed && ours.retry_after.is_none());
                }
            }
        }
    }
}

#[cfg(feature = "redis")]
#[path = "common/redis_server.rs"]
mod redis_server;

#[cfg(feature = "redis")]
mod redis_stores {
    use super::*;

    use crate::redis_server::{RedisCluster, RedisServer};
    use tower_tenancy::store::{RedisStore, ResilientStore};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_redis_cluster_and_resilient() {
        let server = RedisServer::new();
        let url = server.url();
        rate_conformance::run_all(|clock| {
            let url = url.clone();
            async move {
                RedisStore::connect(url)
                    .await
                    .expect("connect")
                    .clock(clock)
            }
        })
        .await;
        rate_conformance::run_all(|clock| {
            let url = url.clone();
            async move {
                let redis = RedisStore::connect(url)
                    .await
                    .expect("connect")
                    .clock(clock);
                ResilientStore::new(redis).timeout(Duration::from_secs(30))
            }
        })
        .await;
        let cluster = RedisCluster::new();
        let urls = cluster.urls();
        rate_conformance::run_all(|clock| {
            let urls = urls.clone();
            async move {
                RedisStore::connect_cluster(urls)
                    .await
                    .expect("connect cluster")
                    .clock(clock)
            }
        })
        .await;
    }

    /// Four instances (own connections) on one Redis, 100 per 60 s: 200
    /// concurrent requests 1 ms before a window boundary, 200 more 1 s after
    /// it. Every admission lies within 1.001 s, so exactly 100 may pass.
    /// Returns how many did.
    async fn straddle(url: &str, algorithm: Algorithm, tenant: &str) -> usize {
        let clock = Arc::new(ManualClock::new(T0 + 60_000 - 1));
        let mut stores = Vec::new();
        for _ in 0..4 {
            let store = RedisStore::connect(url).await.expect("connect");
            stores.push(Arc::new(store.clock(clock.clone())));
        }
        let tenant: TenantId = tenant.parse().unwrap();
        let check = Check::new("api", algorithm, 100, 1);
        let mut admitted = 0;
        for at in [T0 + 60_000 - 1, T0 + 61_000] {
            clock.set_ms(at);
            let tasks: Vec<_> = (0..200)
                .map(|i| {
                    let store = stores[i % 4].clone();
                    let (tenant, check) = (tenant.clone(), check.clone());
                    tokio::spawn(async move {
                        store
                            .admit(&tenant, std::slice::from_ref(&check))
                            .await
                            .expect("admit")
                            .allowed()
                    })
                })
                .collect();
            for task in tasks {
                admitted += usize::from(task.await.unwrap());
            }
        }
        admitted
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn four_instances_burst_across_a_window_boundary() {
        let server = RedisServer::new();
        let window = Duration::from_secs(60);
        let sub_buckets = straddle(
            &server.url(),
            Algorithm::SlidingWindow { window },
            "straddle-sb",
        )
        .await;
        assert_eq!(
            sub_buckets, 100,
            "the sub-bucket window admits exactly the limit"
        );
        let log = straddle(
            &server.url(),
            Algorithm::SlidingLog { window },
            "straddle-sl",
        )
        .await;
        assert_eq!(log, 100);
        // The control: the two-counter window weighs the previous window's
        // 100 as floor(100 × 59/60) = 98 one second in, and admits 2 more.
        let approx = straddle(
            &server.url(),
            Algorithm::SlidingWindowApprox { window },
            "straddle-sw",
        )
        .await;
        assert_eq!(approx, 102, "the two-counter window goes over");
    }
}
