//! The Redis counter store against real servers started by the tests: a
//! single `redis-server` and a three-master Redis Cluster.
#![cfg(feature = "redis")]

#[path = "common/checks.rs"]
mod checks;
#[path = "common/conformance.rs"]
mod conformance;
#[path = "common/lcg.rs"]
mod lcg;
#[path = "common/redis_server.rs"]
mod redis_server;

use checks::{approx, cal, cc, gauge, gcra, sl, sw};
use lcg::Lcg;
use std::sync::Arc;
use std::time::Duration;

use redis_server::{RedisCluster, RedisServer};
use tower_tenancy::store::{
    Algorithm, Check, Clock, CounterStore, FailurePolicy, Lease, ManualClock, MemoryStore,
    RedisStore, ResilientStore, StoreError,
};
use tower_tenancy::{Period, TenantId};

/// A store whose connection waits as long as a test needs. redis-rs times a
/// call out after 500 ms by default, which a busy CI machine reaches when 64
/// tasks race (a stress run failed `concurrent_exact` so); these tests are
/// about the answers, not latency, and a timed-out script still counts on
/// the server.
async fn patient_store(url: &str) -> RedisStore {
    let client = redis::Client::open(url).expect("url");
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_secs(30)));
    let manager = redis::aio::ConnectionManager::new_with_config(client, config)
        .await
        .expect("connect");
    RedisStore::from_connection_manager(manager)
}

/// The same for a cluster.
async fn patient_cluster_store(urls: Vec<String>) -> RedisStore {
    let client = redis::cluster::ClusterClient::builder(urls)
        .response_timeout(Duration::from_secs(30))
        .build()
        .expect("urls");
    RedisStore::from_cluster_connection(client.get_async_connection().await.expect("connect"))
}

// ---------------------------------------------------------------------------
// Targets

enum Target {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Target {
    fn single() -> Self {
        Target::Single(RedisServer::new())
    }

    fn cluster() -> Self {
        Target::Cluster(RedisCluster::new())
    }

    /// A new store with its own connection.
    async fn store(&self) -> RedisStore {
        match self {
            Target::Single(s) => patient_store(&s.url()).await,
            Target::Cluster(c) => patient_cluster_store(c.urls()).await,
        }
    }

    /// The server holding `key`.
    fn node_for(&self, key: &str) -> &RedisServer {
        match self {
            Target::Single(s) => s,
            Target::Cluster(c) => c.node_for(key),
        }
    }

    fn nodes(&self) -> Vec<&RedisServer> {
        match self {
            Target::Single(s) => vec![s],
            Target::Cluster(c) => c.nodes().iter().collect(),
        }
    }

    /// Script calls: `EVALSHA` and `FCALL` (the lean scripts are Redis
    /// functions).
    fn script_calls(&self) -> u64 {
        self.nodes().iter().map(|n| n.script_calls()).sum()
    }

    fn reset_stats(&self) {
        for n in self.nodes() {
            n.cli(&["CONFIG", "RESETSTAT"]);
        }
    }
}

fn tenant(s: &str) -> TenantId {
    s.parse().unwrap()
}

// ---------------------------------------------------------------------------
// Scenarios, run against a single server and against the cluster.

/// Random batches, identical decisions to the in-memory store under the same
/// test clock (the in-memory store is the reference implementation of the
/// semantics in `tower_tenancy::store`).
async fn differential(target: &Target, t: &str, seed: u64) {
    let clock = Arc::new(ManualClock::new(1_704_067_200_000 - 3_600_000 - 5_000));
    let redis = target.store().await.clock(clock.clone());
    let memory = MemoryStore::with_clock(clock.clone());
    let tenant = tenant(t);
    let mut rng = Lcg(seed);
    let pool = [
        sw("sw_fast", 1_000, 6, 1),
        sw("sw_slow", 7_000, 20, 1),
        sl("sl_fast", 1_500, 5, 1),
        sl("sl_slow", 9_000, 12, 1),
        cal("cal_hour", Period::Hour, 15, 1),
        cal("cal_day", Period::Day, 40, 1),
        cal("cal_week", Period::Week, 50, 1),
        cal("cal_month", Period::Month, 60, 1),
        cc("conc", 3_600_000, 4, 1),
        gauge("gauge", 25, 1),
        approx("ap_fast", 1_300, 7, 1),
        gcra("gc_fast", 1_000, 5, 5, 1),
        gcra("gc_burst", 3_000, 4, 9, 1),
        gcra("gc_odd", 7_001, 3, 2, 1),
    ];
    let conc = [pool[8].clone()];
    let mut held: Vec<(Lease, Lease)> = Vec::new();
    let (mut allowed, mut denied, mut retries, mut batches_admitted) = (0, 0, 0, 0);
    for step in 0..600 {
        let advance = match rng.below(10) {
            0..=4 => rng.below(300),
            5..=7 => rng.below(2_000),
            8 => 0,
            _ => rng.below(40_000),
        };
        clock.advance_ms(advance);
        let now = clock.now_ms();
        match rng.below(20) {
            0 => {
                let delta = rng.below(7) as i64 - 4;
                let got = redis.adjust(&tenant, "gauge", delta).await.unwrap();
                let expected = memory.adjust(&tenant, "gauge", delta).await.unwrap();
                assert_eq!(got, expected, "adjust at step {step}");
                continue;
            }
            1 | 2 if !held.is_empty() => {
                let i = rng.below(held.len() as u64) as usize;
                drop(held.swap_remove(i));
                let expected = level(&memory, &tenant, &conc[0]).await;
                wait_for_used(&redis, &tenant, &conc, expected).await;
                continue;
            }
            _ => {}
        }
        let n = 1 + rng.below(3) as usize;
        let mut checks = Vec::new();
        let mut taken = Vec::new();
        while checks.len() < n {
            let i = rng.below(pool.len() as u64) as usize;
            if taken.contains(&i) {
                continue;
            }
            taken.push(i);
            let mut c = pool[i].clone();
            c.cost = match rng.below(14) {
                0 => c.limit + 1,
                1 => 0,
                2..=4 => 2,
                5 => 3,
                _ => 1,
            };
            checks.push(c);
        }
        let admit = rng.below(5) != 0;
        let (got, expected) = if admit {
            let a = redis.admit(&tenant, &checks).await.unwrap();
            let b = memory.admit(&tenant, &checks).await.unwrap();
            assert_eq!(a.allowed(), b.allowed());
            assert_eq!(a.lease.is_some(), b.lease.is_some(), "lease at step {step}");
            let decisions = (a.decisions, b.decisions);
            if let (Some(x), Some(y)) = (a.lease, b.lease) {
                held.push((x, y));
            }
            decisions
        } else {
            (
                redis.peek(&tenant, &checks).await.unwrap(),
                memory.peek(&tenant, &checks).await.unwrap(),
            )
        };
        assert_eq!(
            got, expected,
            "step {step}, now {now}, admit {admit}, checks {checks:#?}"
        );
        for d in &got {
            if d.allowed {
                allowed += 1;
            } else {
                denied += 1;
            }
            retries += usize::from(d.retry_after.is_some());
        }
        batches_admitted += usize::from(admit && got.iter().all(|d| d.allowed));
    }
    println!(
        "differential {t}: {allowed} allowed, {denied} denied, {retries} with retry, \
         {batches_admitted} batches admitted"
    );
    assert!(allowed > 100 && denied > 100 && retries > 50 && batches_admitted > 50);
}

/// Calendar periods: UTC-aligned hours, days, ISO weeks and months,
/// including leap years and year ends.
async fn calendar_boundaries(target: &Target, t: &str) {
    let clock = Arc::new(ManualClock::new(0));
    let store = target.store().await.clock(clock.clone());
    let memory = MemoryStore::with_clock(clock.clone());
    // (now, period, period start, period end)
    let cases = [
        (
            1_709_251_199_999,
            Period::Month,
            1_706_745_600_000,
            1_709_251_200_000,
        ), // 2024-02-29T23:59:59.999
        (
            1_704_067_199_999,
            Period::Month,
            1_701_388_800_000,
            1_704_067_200_000,
        ), // 2023-12-31T23:59:59.999
        (
            4_107_499_200_000,
            Period::Month,
            4_105_123_200_000,
            4_107_542_400_000,
        ), // 2100-02-28T12 (no leap day)
        (
            951_825_600_000,
            Period::Month,
            949_363_200_000,
            951_868_800_000,
        ), // 2000-02-29T12
        (
            1_704_277_800_000,
            Period::Week,
            1_704_067_200_000,
            1_704_672_000_000,
        ), // Wed 2024-01-03T10:30
        (
            1_704_671_999_999,
            Period::Week,
            1_704_067_200_000,
            1_704_672_000_000,
        ), // Sun 2024-01-07T23:59:59.999
        (
            1_704_067_199_999,
            Period::Week,
            1_703_462_400_000,
            1_704_067_200_000,
        ), // Sun 2023-12-31T23:59:59.999
        (
            1_704_067_200_000,
            Period::Week,
            1_704_067_200_000,
            1_704_672_000_000,
        ), // Mon 2024-01-01T00:00
        (
            1_704_277_800_000,
            Period::Day,
            1_704_240_000_000,
            1_704_326_400_000,
        ),
        (
            1_704_277_800_000,
            Period::Hour,
            1_704_276_000_000,
            1_704_279_600_000,
        ),
    ];
    for (i, &(now, period, start, end)) in cases.iter().enumerate() {
        let tenant = tenant(&format!("{t}-{i}"));
        let check = [cal("quota", period, 3, 1)];
        clock.set_ms(now);
        let a = store.admit(&tenant, &check).await.unwrap();
        assert!(a.allowed());
        assert_eq!(
            a.decisions[0].reset,
            Duration::from_millis(end - now),
            "case {i}"
        );
        store.admit(&tenant, &check).await.unwrap();
        store.admit(&tenant, &check).await.unwrap();
        let denied = store.admit(&tenant, &check).await.unwrap();
        assert!(!denied.allowed());
        assert_eq!(
            denied.decisions[0].retry_after,
            Some(Duration::from_millis(end - now)),
            "case {i}"
        );
        // Same period at both ends; a clock stepping back keeps the later
        // period's count (as the memory store); the next period is fresh.
        for _ in 0..3 {
            clock.set_ms(now);
            memory.admit(&tenant, &check).await.unwrap();
        }
        for (at, used) in [(start, 3), (end - 1, 3), (start - 1, 3), (end, 0)] {
            clock.set_ms(at);
            assert_eq!(
                level(&store, &tenant, &check[0]).await,
                used,
                "case {i} at {at}"
            );
            let d = store.peek(&tenant, &check).await.unwrap();
            assert_eq!(
                d,
                memory.peek(&tenant, &check).await.unwrap(),
                "case {i} at {at}"
            );
        }
    }
}

/// All or nothing: one denial consumes nothing anywhere; peek consumes nothing.
async fn all_or_nothing(target: &Target, t: &str) {
    let store = target.store().await;
    let tenant = tenant(t);
    let batch = [
        sw("a", 60_000, 10, 1),
        sl("b", 60_000, 10, 1),
        cal("c", Period::Day, 10, 1),
        cc("d", 60_000, 10, 1),
        gauge("e", 10, 1),
        gauge("full", 1, 1),
    ];
    store.adjust(&tenant, "full", 1).await.unwrap();
    let a = store.admit(&tenant, &batch).await.unwrap();
    assert!(!a.allowed());
    assert!(a.lease.is_none());
    assert_eq!(
        a.decisions.iter().map(|d| d.allowed).collect::<Vec<_>>(),
        [true, true, true, true, true, false]
    );
    assert!(a.decisions.iter().all(|d| d.used <= 1), "nothing consumed");
    // A dry run answers what an admission would, and consumes nothing.
    let peek = store.peek(&tenant, &batch).await.unwrap();
    let again = store.peek(&tenant, &batch).await.unwrap();
    let levels = |d: &[tower_tenancy::store::Decision]| -> Vec<(bool, u64)> {
        d.iter().map(|d| (d.allowed, d.used)).collect()
    };
    assert_eq!(
        levels(&peek),
        levels(&again),
        "(server time moves: resets may differ)"
    );
    assert!(
        peek[..5].iter().all(|d| d.used == 0 && d.allowed),
        "{peek:?}"
    );
    let peek = store.peek(&tenant, &batch[..5]).await.unwrap();
    assert!(peek.iter().all(|d| d.used == 1 && d.allowed), "{peek:?}");
    let a = store.admit(&tenant, &batch[..5]).await.unwrap();
    assert!(a.allowed());
    assert!(a.lease.is_some());
    assert!(a.decisions.iter().all(|d| d.used == 1 && d.remaining == 9));
    let peek = store.peek(&tenant, &batch[..5]).await.unwrap();
    assert!(peek.iter().all(|d| d.used == 2), "{peek:?}");
    let peek = store.peek(&tenant, &batch[..5]).await.unwrap();
    assert!(peek.iter().all(|d| d.used == 2), "peek twice: {peek:?}");
}

/// Leases: released on drop (by a spawned task), expired after the TTL when
/// never released, and a drop outside a runtime does not panic.
async fn leases(target: &Target, t: &str) {
    let store = target.store().await;
    let tenant = tenant(t);
    let check = [cc("conc", 60_000, 2, 1)];
    let a = store.admit(&tenant, &check).await.unwrap();
    let b = store.admit(&tenant, &check).await.unwrap();
    assert!(a.allowed() && b.allowed());
    let denied = store.admit(&tenant, &check).await.unwrap();
    assert!(!denied.allowed());
    assert_eq!(
        denied.decisions[0].retry_after,
        Some(Duration::from_secs(1))
    );
    assert_eq!(denied.decisions[0].used, 2);
    // The next call of the same store sees a dropped lease released, even
    // before the release task has run.
    drop(a);
    assert_eq!(level(&store, &tenant, &check[0]).await, 1);
    // Dropped on a thread without a runtime: no panic and no task; other
    // instances see the lease held until this store's next call for the
    // tenant removes it (or it expires).
    let other = target.store().await;
    std::thread::spawn(move || drop(b)).join().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(level(&other, &tenant, &check[0]).await, 1);
    assert_eq!(level(&store, &tenant, &check[0]).await, 0);
    assert_eq!(level(&other, &tenant, &check[0]).await, 0);
    // Released by the task alone: another instance sees it soon.
    let c = store.admit(&tenant, &check).await.unwrap();
    assert_eq!(level(&other, &tenant, &check[0]).await, 1);
    drop(c);
    wait_for_used(&other, &tenant, &check, 0).await;

    // Expiry after the TTL, on the server's clock even with a test clock
    // (which only drives windows and periods).
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let store = store.clock(clock.clone());
    let tenant2 = self::tenant(&format!("{t}-ttl"));
    let check = [cc("conc", 2_000, 3, 2)];
    // Redis expires leases on its wall clock (TIME): time them on the same clock.
    let wall = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
    };
    let admitted = wall();
    // A crashed instance never releases nor renews: the admission runs on a
    // runtime of its own (which the lease's renewal runs on), then the
    // lease is forgotten and that runtime shut down.
    let (crashed, t2, c2) = (store.clone(), tenant2.clone(), check.clone());
    let used = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let a = rt.block_on(crashed.admit(&t2, &c2)).unwrap();
        assert!(a.allowed());
        let used = a.decisions[0].used;
        std::mem::forget(a);
        drop(rt);
        used
    })
    .await
    .unwrap();
    assert_eq!(used, 2);
    clock.advance_ms(86_400_000);
    let held = level(&store, &tenant2, &check[0]).await;
    // (Held unless the check came 2 s late, on a stalled machine.)
    assert!(
        held == 2 || wall() - admitted >= Duration::from_secs(2),
        "{held}"
    );
    wait_for_used(&store, &tenant2, &check, 0).await;
    let expired_after = wall() - admitted;
    // Redis counts in whole milliseconds: the admission's, truncated, may
    // be up to 1 ms before `admitted`.
    assert!(
        expired_after >= Duration::from_millis(1_999),
        "expired {expired_after:?} after the admission, before its 2 s TTL"
    );
    let again = store.admit(&tenant2, &check).await.unwrap();
    assert!(again.allowed());
    assert_eq!(again.decisions[0].used, 2);
}

/// Polls (up to 10 s) until the level is `used`.
async fn wait_for_used(store: &RedisStore, tenant: &TenantId, check: &[Check], used: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if level(store, tenant, &check[0]).await == used {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("used never reached {used}");
}

/// The level of a counter (a dry run of cost 0: a dry run reports the level
/// after the cost when it would admit).
async fn level(store: &impl CounterStore, tenant: &TenantId, check: &Check) -> u64 {
    let mut probe = check.clone();
    probe.cost = 0;
    store.peek(tenant, &[probe]).await.unwrap()[0].used
}

/// Gauges: admission adds, adjust moves, saturating at zero.
async fn gauges(target: &Target, t: &str) {
    let store = target.store().await;
    let tenant = tenant(t);
    let check = [gauge("workflows", 3, 1)];
    assert_eq!(store.adjust(&tenant, "workflows", 2).await.unwrap(), 2);
    assert!(store.admit(&tenant, &check).await.unwrap().allowed());
    let denied = store.admit(&tenant, &check).await.unwrap();
    assert!(!denied.allowed());
    assert_eq!(denied.decisions[0].retry_after, None);
    assert_eq!(denied.decisions[0].used, 3);
    assert_eq!(store.adjust(&tenant, "workflows", -10).await.unwrap(), 0);
    assert_eq!(store.adjust(&tenant, "workflows", 1).await.unwrap(), 1);
}

/// Four stores with separate connections hammer one tenant concurrently:
/// the exact algorithms admit exactly `limit`.
async fn hammer(target: &Target, t: &str) {
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(target.store().await);
    }
    let tenant = tenant(t);
    let limit = 37;
    let cases = [
        sl("log", 600_000, limit, 1),
        cal("quota", Period::Month, limit, 1),
        cc("conc", 600_000, limit, 1),
        gauge("gauge", limit, 1),
    ];
    for check in cases {
        let mut tasks = Vec::new();
        for store in &stores {
            for _ in 0..40 {
                let (store, tenant, check) = (store.clone(), tenant.clone(), check.clone());
                tasks.push(tokio::spawn(async move {
                    store.admit(&tenant, &[check]).await.unwrap()
                }));
            }
        }
        let mut admitted = 0;
        let mut held = Vec::new();
        for task in tasks {
            let a = task.await.unwrap();
            if a.allowed() {
                admitted += 1;
                held.push(a); // keep concurrency leases
            }
        }
        assert_eq!(admitted, limit, "{:?}", check.algorithm);
        assert_eq!(
            level(&stores[0], &tenant, &check).await,
            limit,
            "{:?}",
            check.algorithm
        );
    }
}

/// One round trip per admission, whatever the number of checks.
async fn one_round_trip(target: &Target, t: &str) {
    let store = target.store().await;
    let tenant = tenant(t);
    let batch = [
        sw("a", 60_000, 1000, 1),
        sl("b", 60_000, 1000, 1),
        cal("c", Period::Day, 1000, 1),
        cc("d", 60_000, 1000, 1),
        gauge("e", 1000, 1),
    ];
    // Load the script (a first EVALSHA may answer NOSCRIPT).
    store.peek(&tenant, &batch).await.unwrap();
    target.reset_stats();
    let admits = 25;
    for _ in 0..admits {
        let a = store.admit(&tenant, &batch).await.unwrap();
        assert!(a.allowed());
        std::mem::forget(a.lease); // no release traffic in the count
    }
    assert_eq!(target.script_calls(), admits);
    let evals: u64 = target.nodes().iter().map(|n| n.command_calls("eval")).sum();
    assert_eq!(evals, 0);
}

/// Every key has an expiry except gauges; all keys of a tenant share one slot.
async fn ttls(target: &Target, t: &str) {
    let store = target.store().await;
    let tenant = tenant(t);
    let batch = [
        sw("a", 60_000, 10, 1),
        sl("b", 60_000, 10, 1),
        cal("c", Period::Month, 10, 1),
        cc("d", 60_000, 10, 1),
        gauge("e", 10, 1),
    ];
    let a = store.admit(&tenant, &batch).await.unwrap();
    assert!(a.allowed());
    let mut keys: Vec<String> = batch
        .iter()
        .map(|c| store.key(&tenant, &c.algorithm, &c.policy))
        .collect();
    keys.push(format!("tt:{{{t}}}:sq:b"));
    let node = target.node_for(&keys[0]);
    let listed = node.cli(&["--scan", "--pattern", &format!("tt:{{{t}}}:*")]);
    let mut listed: Vec<&str> = listed.lines().collect();
    listed.sort();
    let mut expected: Vec<&str> = keys.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(listed, expected, "every key of the tenant on one node");
    if matches!(target, Target::Cluster(_)) {
        // (A single server has no slots: CLUSTER KEYSLOT is an error there.)
        let slots: Vec<i64> = keys
            .iter()
            .map(|k| node.int(&["CLUSTER", "KEYSLOT", k]))
            .collect();
        assert!(slots.windows(2).all(|w| w[0] == w[1]), "{slots:?}");
    }
    for key in &keys {
        let pttl: i64 = node.int(&["PTTL", key]);
        if key.contains(":g:") {
            assert_eq!(pttl, -1, "{key} has no expiry");
        } else {
            assert!(pttl > 0, "{key} expires ({pttl})");
        }
    }
    let pttl: i64 = node.int(&["PTTL", &keys[0]]);
    // Until its newest bucket stops counting: W to W + W/8 after the
    // admission (less the time since, which a busy machine makes long).
    assert!(
        pttl > 50_000 && pttl <= 67_500,
        "sliding window: W + W/8 at most ({pttl})"
    );
    let pttl: i64 = node.int(&["PTTL", &keys[1]]);
    assert!(pttl > 50_000 && pttl <= 60_000, "sliding log: W ({pttl})");
}

// ---------------------------------------------------------------------------
// The shared store conformance suite: one server per scenario, and the whole
// suite against the cluster (below).

mod conformance_single {
    use super::*;

    macro_rules! scenarios {
        ($($flavor:literal: $($name:ident),* ;)*) => {$($(
            #[tokio::test(flavor = $flavor)]
            async fn $name() {
                let server = RedisServer::new();
                let clock = Arc::new(ManualClock::new(conformance::T0));
                let store = patient_store(&server.url()).await.clock(clock.clone());
                conformance::$name(store, clock).await;
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
            calendar_first_request_1ms_before_a_period;
        "multi_thread":
            concurrent_exact,
            concurrent_batches;
    }

    /// The whole suite through a `ResilientStore` over a healthy Redis.
    #[tokio::test(flavor = "multi_thread")]
    async fn run_all_resilient_healthy() {
        let server = RedisServer::new();
        let url = server.url();
        conformance::run_all(|clock| {
            let url = url.clone();
            // A generous timeout, fail-closed: on a busy machine a slow
            // answer must not turn into a fail-open admission.
            async move {
                ResilientStore::new(patient_store(&url).await.clock(clock))
                    .timeout(Duration::from_secs(30))
                    .policy(FailurePolicy::FailClosed)
            }
        })
        .await;
    }

    /// With a fallback configured: the healthy Redis still decides.
    #[tokio::test(flavor = "multi_thread")]
    async fn run_all_resilient_with_a_fallback() {
        let server = RedisServer::new();
        let url = server.url();
        conformance::run_all(|clock| {
            let url = url.clone();
            async move {
                ResilientStore::new(patient_store(&url).await.clock(clock.clone()))
                    .timeout(Duration::from_secs(30))
                    .fallback(MemoryStore::with_clock(clock))
            }
        })
        .await;
    }

    /// Redis killed after connecting: the fallback answers every call with
    /// the same semantics.
    #[tokio::test(flavor = "multi_thread")]
    async fn run_all_resilient_dead_redis_fallback() {
        let mut server = RedisServer::new();
        let redis = RedisStore::connect(server.url()).await.unwrap();
        server.stop();
        conformance::run_all(|clock| {
            let redis = redis.clone().clock(clock.clone());
            async move {
                ResilientStore::new(redis)
                    .timeout(Duration::from_millis(500))
                    .fallback(MemoryStore::with_clock(clock))
            }
        })
        .await;
    }
}

// ---------------------------------------------------------------------------
// Single server

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_same_decisions_as_memory_store() {
    let target = Target::single();
    // TT_DIFF_SEEDS=n runs more seeds.
    let seeds: u64 = std::env::var("TT_DIFF_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for seed in 0..seeds {
        differential(&target, &format!("diff{seed}"), seed * 7919 + 1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_calendar_boundaries() {
    calendar_boundaries(&Target::single(), "cal").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_all_or_nothing_and_peek() {
    all_or_nothing(&Target::single(), "aon").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_leases() {
    leases(&Target::single(), "leases").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_gauges() {
    gauges(&Target::single(), "gauges").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_hammer_four_instances() {
    hammer(&Target::single(), "hammer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_one_round_trip_per_admit() {
    one_round_trip(&Target::single(), "rtt").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_key_ttls() {
    ttls(&Target::single(), "ttl").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_time_is_used_without_a_test_clock() {
    let target = Target::single();
    let store = target.store().await;
    let tenant = tenant("time");
    let check = [cal("q", Period::Hour, 5, 1)];
    let a = store.admit(&tenant, &check).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let expected = 3_600_000 - now % 3_600_000;
    let got = a.decisions[0].reset.as_millis() as i64;
    assert!((got - expected as i64).abs() < 2_000, "{got} vs {expected}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_and_lease_ids() {
    let target = Target::single();
    let a = target.store().await.prefix("other:");
    let b = target.store().await;
    let tenant = tenant("pfx");
    let check = [cc("c", 60_000, 10, 1)];
    let key = a.key(&tenant, &check[0].algorithm, "c");
    assert_eq!(key, "other:{pfx}:cc:c");
    let mut held = Vec::new();
    for store in [&a, &b, &a, &b] {
        held.push(store.admit(&tenant, &check).await.unwrap());
    }
    let Target::Single(server) = &target else {
        unreachable!()
    };
    let members = server.cli(&["ZRANGE", &key, "0", "-1"]);
    let members: Vec<&str> = members.lines().collect();
    assert_eq!(members.len(), 2, "two leases under the other prefix");
    assert_ne!(members[0], members[1]);
    let other = server.cli(&["ZRANGE", "tt:{pfx}:cc:c", "0", "-1"]);
    let ids: Vec<&str> = other
        .lines()
        .map(|m| m.split(':').next().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    assert_ne!(ids[0][..16], members[0][..16], "random prefix per instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_errors_are_store_errors() {
    let mut server = RedisServer::new();
    let store = RedisStore::connect(server.url()).await.unwrap();
    server.stop();
    let err = store
        .admit(&tenant("down"), &[gauge("g", 1, 1)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
}

/// Prints `MEMORY USAGE` per key kind (figures for the module docs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_usage_per_key() {
    let target = Target::single();
    let Target::Single(server) = &target else {
        unreachable!()
    };
    let store = target.store().await;
    let tenant = tenant("tenant-42");
    // Strict: a missing key (nil) or no answer fails the test.
    let usage = |key: &str| -> u64 { server.int(&["MEMORY", "USAGE", key, "SAMPLES", "0"]) as u64 };
    let mut figures = Vec::new();
    let one = [
        sw("api_calls", 60_000, 100_000, 1),
        approx("api_calls", 60_000, 100_000, 1),
        gcra("api_calls", 60_000, 100_000, 100_000, 1),
        sl("api_calls", 600_000, 100_000, 1),
        cal("api_calls", Period::Month, 100_000, 1),
        cc("api_calls", 600_000, 100_000, 1),
        gauge("api_calls", 100_000, 1),
    ];
    let mut leases = Vec::new();
    let mut admitted = 0;
    for n in [1, 100, 1000] {
        while admitted < n {
            let a = store.admit(&tenant, &one).await.unwrap();
            assert!(a.allowed());
            leases.push(a);
            admitted += 1;
        }
        for c in &one {
            let key = store.key(&tenant, &c.algorithm, &c.policy);
            figures.push((format!("{key} after {n}"), usage(&key)));
        }
        let seq = "tt:{tenant-42}:sq:api_calls";
        figures.push((format!("{seq} after {n}"), usage(seq)));
    }
    for (key, bytes) in &figures {
        println!("MEMORY USAGE {key}: {bytes} bytes");
    }
    let bytes = |kind: &str, n: u64| -> u64 {
        figures
            .iter()
            .find(|(k, _)| k.contains(&format!(":{kind}:")) && k.ends_with(&format!(" after {n}")))
            .unwrap_or_else(|| panic!("no figure for {kind} after {n}"))
            .1
    };
    for n in [1, 100, 1000] {
        // O(1) keys: the same small size whatever the traffic.
        for kind in ["sb2", "sw", "gc", "calm", "g", "sq"] {
            assert!(
                bytes(kind, n) < 200,
                "{kind} after {n}: {} bytes",
                bytes(kind, n)
            );
        }
    }
    // One entry per admission in the log and the lease set: they grow with
    // the traffic, by less than 100 bytes an entry.
    for kind in ["sl", "cc"] {
        let (one, thousand) = (bytes(kind, 1), bytes(kind, 1000));
        assert!(
            bytes(kind, 100) > one && thousand > bytes(kind, 100),
            "{kind} grows with its entries"
        );
        assert!(
            thousand < one + 999 * 150,
            "{kind}: {one} bytes for 1 entry, {thousand} for 1000"
        );
    }
}

// ---------------------------------------------------------------------------
// Cluster: the same scenarios against three masters (one cluster for all).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_scenarios() {
    let target = Target::cluster();
    let Target::Cluster(cluster) = &target else {
        unreachable!()
    };
    let urls = cluster.urls();
    conformance::run_all(|clock| {
        let urls = urls.clone();
        async move { patient_cluster_store(urls).await.clock(clock) }
    })
    .await;
    differential(&target, "c-diff", 5).await;
    calendar_boundaries(&target, "c-cal").await;
    all_or_nothing(&target, "c-aon").await;
    leases(&target, "c-leases").await;
    gauges(&target, "c-gauges").await;
    hammer(&target, "c-hammer").await;
    one_round_trip(&target, "c-rtt").await;
    ttls(&target, "c-ttl").await;
    // The scenarios' tenants spread over the nodes: each tenant's keys (of
    // the scenarios whose keys outlive them) are all on the node serving its
    // hash tag, none elsewhere, and the tenants use more than one master.
    let mut used = std::collections::BTreeSet::new();
    for t in ["c-diff", "c-aon", "c-gauges", "c-hammer", "c-rtt", "c-ttl"] {
        let index = cluster.index_for(&format!("tt:{{{t}}}:x"));
        let pattern = format!("tt:{{{t}}}:*");
        for (i, node) in cluster.nodes().iter().enumerate() {
            let keys = node.cli(&["--scan", "--pattern", &pattern]).lines().count();
            if i == index {
                assert!(keys > 0, "tenant {t}: no key on its node {}", node.port());
                println!("tenant {t} lives on node {} ({keys} keys)", node.port());
            } else {
                assert_eq!(keys, 0, "tenant {t}: keys on node {}", node.port());
            }
        }
        used.insert(index);
    }
    assert!(used.len() >= 2, "the tenants use one master only: {used:?}");
}

/// Extreme inputs (the conformance suite's `extreme_values` needs gauges up
/// to `u64::MAX`, which Redis integers cannot hold): every call answers,
/// decisions stay consistent, gauges saturate at `i64::MAX`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_inputs_answer() {
    let target = Target::single();
    let clock = Arc::new(ManualClock::new(0));
    let store = target.store().await.clock(clock.clone());
    let t = tenant("extreme");
    let algorithms = [
        Algorithm::SlidingWindow {
            window: Duration::ZERO,
        },
        Algorithm::SlidingLog {
            window: Duration::ZERO,
        },
        Algorithm::SlidingWindow {
            window: Duration::MAX,
        },
        Algorithm::SlidingLog {
            window: Duration::MAX,
        },
        Algorithm::SlidingWindowApprox {
            window: Duration::MAX,
        },
        Algorithm::Gcra {
            window: Duration::ZERO,
            burst: 0,
        },
        Algorithm::Gcra {
            window: Duration::MAX,
            burst: u64::MAX,
        },
        Algorithm::Gcra {
            window: Duration::from_secs(1),
            burst: 3,
        },
        Algorithm::Calendar {
            period: Period::Hour,
        },
        Algorithm::Calendar {
            period: Period::Week,
        },
        Algorithm::Calendar {
            period: Period::Month,
        },
        Algorithm::Concurrency {
            lease_ttl: Duration::MAX,
        },
        Algorithm::Gauge,
    ];
    for now in [0, 1, conformance::T0, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
        clock.set_ms(now);
        for (i, algorithm) in algorithms.into_iter().enumerate() {
            // A key of a window (or GCRA period) this short expires in
            // Redis after a few real milliseconds, which the manual clock
            // does not hold back: between the peek and the admission it may
            // be gone (on a busy machine it is, at times), so the two may
            // disagree. Each algorithm has keys of its own, so that such a
            // key is not read by the long windows' checks either.
            let short_lived = match algorithm {
                Algorithm::SlidingWindow { window }
                | Algorithm::SlidingLog { window }
                | Algorithm::SlidingWindowApprox { window }
                | Algorithm::Gcra { window, .. } => window < Duration::from_secs(60),
                _ => false,
            };
            for (limit, cost) in [
                (u64::MAX, u64::MAX),
                (u64::MAX, 1),
                (u64::MAX - 1, u64::MAX),
                (0, 0),
                (1, 0),
                (5, 7),
            ] {
                let c = Check::new(format!("a{i}-{limit}-{cost}"), algorithm, limit, cost);
                let p = store.peek(&t, std::slice::from_ref(&c)).await.unwrap();
                let a = store.admit(&t, std::slice::from_ref(&c)).await.unwrap();
                let d = a.decisions[0];
                // GCRA reports its bucket: the burst (clamped below 2^53).
                let limit = match algorithm {
                    Algorithm::Gcra { burst, .. } => burst.min((1 << 53) - 1),
                    _ => limit,
                };
                assert_eq!(d.limit, limit);
                assert!(d.used <= limit || !d.allowed, "{algorithm:?} {now} {d:?}");
                if cost > limit {
                    assert!(!d.allowed && d.retry_after.is_none(), "{algorithm:?} {d:?}");
                }
                assert!(
                    short_lived || p[0].allowed || !d.allowed,
                    "{algorithm:?} now {now} limit {limit} cost {cost}: peek {:?}, admit {d:?}",
                    p[0]
                );
            }
        }
    }
    assert_eq!(
        store.adjust(&t, "big", i64::MAX).await.unwrap(),
        i64::MAX as u64
    );
    assert_eq!(
        store.adjust(&t, "big", i64::MAX).await.unwrap(),
        i64::MAX as u64,
        "saturates"
    );
    assert_eq!(
        store.adjust(&t, "big", -1).await.unwrap(),
        i64::MAX as u64 - 1
    );
    assert_eq!(store.adjust(&t, "big", i64::MIN).await.unwrap(), 0);
}

/// `connect` opens `RedisStore::CONNECTIONS` connections: calls one at a
/// time keep to one of them, calls in flight together spread over all
/// (the server's `CLIENT LIST` names each client's last command).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_the_connections_only_when_concurrent() {
    let server = RedisServer::new();
    let store = RedisStore::connect(server.url()).await.unwrap();
    let tenant: TenantId = "acme".parse().unwrap();
    let checks = [sw("api", 60_000, 1_000, 1)];
    let carried_a_call = || {
        server
            .cli(&["CLIENT", "LIST"])
            .lines()
            .filter(|l| l.contains(" cmd=fcall "))
            .count()
    };
    for _ in 0..20 {
        assert!(store.admit(&tenant, &checks).await.unwrap().allowed());
    }
    assert_eq!(carried_a_call(), 1, "{}", server.cli(&["CLIENT", "LIST"]));
    // Each call takes its connection when it is made: sixteen made before
    // any is answered take the four in turn (4 each).
    let calls: Vec<_> = (0..16).map(|_| store.admit(&tenant, &checks)).collect();
    for call in calls {
        assert!(call.await.unwrap().allowed());
    }
    assert_eq!(carried_a_call(), RedisStore::CONNECTIONS);
}
