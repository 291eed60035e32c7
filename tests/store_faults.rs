//! Fault tests: a `ResilientStore` over a `RedisStore` whose server is killed
//! and restarted, or frozen with SIGSTOP, under load.
//!
//! Run with `--nocapture` to see the measured figures (breaker open time,
//! recovery time, call latencies). Latencies are figures, checked only
//! against sanity bounds that hold on a busy machine: no call waits much
//! beyond the timeout, and no call made while the breaker is open waits as
//! long as a timeout. The Redis store runs on a manual clock, so the
//! month's quota cannot roll over mid-test.
#![cfg(feature = "redis")]

#[path = "common/redis_server.rs"]
mod redis_server;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_server::RedisServer;
use tower_tenancy::store::{
    Algorithm, BreakerState, Check, CounterStore, FailurePolicy, ManualClock, MemoryStore,
    RedisStore, ResilientStore, StoreError,
};
use tower_tenancy::{Period, TenantId};

const TIMEOUT: Duration = Duration::from_millis(150);
const COOL_DOWN: Duration = Duration::from_millis(400);
const FAILURES: u32 = 3;
/// No call takes longer than the timeout plus this (a sanity bound on a
/// loaded 2-core machine; without the timeout a call to a frozen server
/// would not return before it is resumed).
const SANITY: Duration = Duration::from_secs(2);
/// 2026-12-03T10:00:30Z.
const T0: u64 = 1_796_292_030_000;
const LIMIT: u64 = 1_000_000;

fn tenant() -> TenantId {
    "acme".parse().unwrap()
}

fn quota() -> [Check; 1] {
    [Check::new(
        "calls",
        Algorithm::Calendar {
            period: Period::Month,
        },
        LIMIT,
        1,
    )]
}

async fn resilient(server: &RedisServer, policy: FailurePolicy) -> ResilientStore<RedisStore> {
    let redis = RedisStore::connect(server.url())
        .await
        .expect("connect")
        .clock(Arc::new(ManualClock::new(T0)));
    ResilientStore::new(redis)
        .timeout(TIMEOUT)
        .policy(policy)
        .breaker(FAILURES, COOL_DOWN)
}

/// Background load: `tasks` loops admitting as fast as the store answers
/// (with a short pause), recording the slowest call, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    slowest_us: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start<S: CounterStore + Clone>(store: &S, tasks: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let slowest_us = Arc::new(AtomicU64::new(0));
        let tasks = (0..tasks)
            .map(|_| {
                let (store, stop, calls, slowest) = (
                    store.clone(),
                    stop.clone(),
                    calls.clone(),
                    slowest_us.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let _ = store.admit(&tenant(), &quota()).await;
                        let took = started.elapsed().as_micros() as u64;
                        slowest.fetch_max(took, Ordering::Relaxed);
                        calls.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(3)).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            calls,
            slowest_us,
            tasks,
        }
    }

    /// Polls until the load has made `n` calls (up to 10 s).
    async fn until_calls(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.calls.load(Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "the load is not running");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn finish(self) -> (u64, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("a load task panicked");
        }
        (
            self.calls.load(Ordering::Relaxed),
            Duration::from_micros(self.slowest_us.load(Ordering::Relaxed)),
        )
    }
}

/// One timed admission.
async fn timed<S: CounterStore>(
    store: &S,
) -> (
    Duration,
    Result<tower_tenancy::store::Admission, StoreError>,
) {
    let started = Instant::now();
    let result = store.admit(&tenant(), &quota()).await;
    (started.elapsed(), result)
}

/// Whether an admission was counted by Redis (a fail-open answer reports
/// nothing used).
fn counted(a: &tower_tenancy::store::Admission) -> bool {
    a.decisions[0].used > 0
}

struct Outage {
    /// From the kill to the breaker opening.
    to_open: Duration,
    /// The slowest call while the breaker was closed and the server down.
    slowest_failing: Duration,
    /// The slowest call while the breaker was open.
    slowest_open: Duration,
    /// Calls answered while down.
    answers: Vec<Result<u64, StoreError>>,
}

/// Calls the store every 10 ms from the moment the server went away until
/// the breaker is open, then for a while longer.
async fn ride_outage<S: CounterStore>(
    store: &ResilientStore<S>,
    down_since: Instant,
    open_for: Duration,
) -> Outage {
    let mut slowest_failing = Duration::ZERO;
    let mut answers = Vec::new();
    let to_open = loop {
        let (took, result) = timed(store).await;
        assert!(
            took <= TIMEOUT + SANITY,
            "a call took {took:?} (timeout {TIMEOUT:?})"
        );
        slowest_failing = slowest_failing.max(took);
        answers.push(result.map(|a| a.decisions[0].used));
        if store.is_open() {
            break down_since.elapsed();
        }
        assert!(
            down_since.elapsed() < Duration::from_secs(10),
            "breaker never opened"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut slowest_open = Duration::ZERO;
    let until = Instant::now() + open_for;
    while Instant::now() < until {
        if store.breaker_state() == BreakerState::Open {
            let (took, result) = timed(store).await;
            slowest_open = slowest_open.max(took);
            answers.push(result.map(|a| a.decisions[0].used));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Outage {
        to_open,
        slowest_failing,
        slowest_open,
        answers,
    }
}

/// Calls every 10 ms until an admission is counted by Redis again; returns
/// the time it took and that admission's level.
async fn until_counted<S: CounterStore>(
    store: &ResilientStore<S>,
    since: Instant,
) -> (Duration, u64) {
    loop {
        let (took, result) = timed(store).await;
        assert!(
            took <= TIMEOUT + SANITY,
            "a call took {took:?} during recovery"
        );
        if let Ok(a) = result {
            if counted(&a) && !store.is_open() {
                return (since.elapsed(), a.decisions[0].used);
            }
        }
        assert!(
            since.elapsed() < Duration::from_secs(15),
            "no recovery within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_survives_a_restart() {
    let mut server = RedisServer::new();
    let store = resilient(&server, FailurePolicy::FailOpen).await;
    let load = Load::start(&store, 4);
    load.until_calls(20).await;
    let (_, a) = timed(&store).await;
    assert!(counted(&a.unwrap()), "Redis counts before the outage");

    server.stop();
    let down = Instant::now();
    let outage = ride_outage(&store, down, Duration::from_millis(300)).await;
    for answer in &outage.answers {
        // Fail-open: admitted, nothing counted.
        assert_eq!(answer.as_ref().ok(), Some(&0), "{answer:?}");
    }
    // While open, calls do not wait for a timeout.
    assert!(outage.slowest_open < TIMEOUT, "{:?}", outage.slowest_open);

    server.start();
    let up = Instant::now();
    let (recovery, used) = until_counted(&store, up).await;
    // The restarted server is empty (no persistence): counting starts again.
    let (_, next) = timed(&store).await;
    let next = next.unwrap().decisions[0].used;
    assert!(next > used, "counting resumes: {used} then {next}");
    let (calls, slowest) = load.finish().await;
    assert!(
        slowest <= TIMEOUT + SANITY,
        "slowest loaded call {slowest:?}"
    );
    println!(
        "fail-open: breaker open {:?} after the kill; slowest call while failing {:?}, \
         while open {:?}; counted again {:?} after the restart; load: {calls} calls, \
         slowest {slowest:?}",
        outage.to_open, outage.slowest_failing, outage.slowest_open, recovery
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_returns_store_errors() {
    let mut server = RedisServer::new();
    let store = resilient(&server, FailurePolicy::FailClosed).await;
    let load = Load::start(&store, 4);
    load.until_calls(20).await;
    let before = timed(&store).await.1.unwrap().decisions[0].used;
    assert!(before > 0);

    server.stop();
    let down = Instant::now();
    let outage = ride_outage(&store, down, Duration::from_millis(300)).await;
    let mut breaker_open = 0;
    for answer in &outage.answers {
        match answer {
            Err(StoreError::Backend(_) | StoreError::Timeout) => {}
            Err(StoreError::BreakerOpen) => breaker_open += 1,
            Err(other) => panic!("unexpected error {other}"),
            Ok(used) => panic!("fail-closed answered Ok({used}) while down"),
        }
    }
    assert!(breaker_open > 0, "calls while open get BreakerOpen");
    // While open, calls do not wait for a timeout.
    assert!(outage.slowest_open < TIMEOUT, "{:?}", outage.slowest_open);

    server.start();
    let up = Instant::now();
    let (recovery, used) = until_counted(&store, up).await;
    assert!(used >= 1);
    assert_eq!(store.breaker_state(), BreakerState::Closed);
    let (calls, slowest) = load.finish().await;
    assert!(
        slowest <= TIMEOUT + SANITY,
        "slowest loaded call {slowest:?}"
    );
    println!(
        "fail-closed: breaker open {:?} after the kill; slowest call while failing {:?}, \
         while open {:?}; closed and counting {:?} after the restart; load: {calls} calls, \
         slowest {slowest:?}",
        outage.to_open, outage.slowest_failing, outage.slowest_open, recovery
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_uses_the_memory_store() {
    let mut server = RedisServer::new();
    let redis = RedisStore::connect(server.url()).await.unwrap();
    let local = Arc::new(MemoryStore::new());
    let store = ResilientStore::new(redis)
        .timeout(TIMEOUT)
        .fallback(local.clone())
        .breaker(FAILURES, COOL_DOWN);
    let tight = [Check::new(
        "burst",
        Algorithm::SlidingLog {
            window: Duration::from_secs(60),
        },
        3,
        1,
    )];
    assert!(store.admit(&tenant(), &tight).await.unwrap().allowed());
    assert_eq!(store.adjust(&tenant(), "workflows", 2).await.unwrap(), 2);

    server.stop();
    // The memory store answers, with its own (fresh) counters.
    let mut decisions = Vec::new();
    for _ in 0..4 {
        let started = Instant::now();
        let a = store.admit(&tenant(), &tight).await.unwrap();
        assert!(started.elapsed() <= TIMEOUT + SANITY);
        decisions.push((a.allowed(), a.decisions[0].used, a.decisions[0].retry_after));
    }
    assert_eq!(
        decisions.iter().map(|d| d.0).collect::<Vec<_>>(),
        [true, true, true, false]
    );
    assert_eq!(decisions[2].1, 3);
    assert!(
        decisions[3].2.is_some(),
        "memory decisions carry retry-after"
    );
    // The breaker opens once failures span two timeouts. The first call on
    // each of the store's connections fails at once (connection refused);
    // the calls after it wait for the reconnection and time out. Refused by
    // the memory store meanwhile (refusals consume nothing).
    for _ in 0..RedisStore::CONNECTIONS + 2 * FAILURES as usize {
        if store.is_open() {
            break;
        }
        let started = Instant::now();
        assert!(!store.admit(&tenant(), &tight).await.unwrap().allowed());
        assert!(started.elapsed() <= TIMEOUT + SANITY);
    }
    assert!(store.is_open());
    // Exactly the memory store's state.
    let mut probe = tight[0].clone();
    probe.cost = 0;
    assert_eq!(local.peek(&tenant(), &[probe]).await.unwrap()[0].used, 3);
    // Gauges too.
    assert_eq!(store.adjust(&tenant(), "workflows", 1).await.unwrap(), 1);

    server.start();
    let up = Instant::now();
    loop {
        let a = store.admit(&tenant(), &tight).await.unwrap();
        if !store.is_open() {
            // Redis again: the restarted server counts from zero.
            assert!(a.allowed());
            assert_eq!(a.decisions[0].used, 1);
            break;
        }
        assert!(up.elapsed() < Duration::from_secs(15), "no recovery");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "fallback: Redis answers again {:?} after the restart",
        up.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_server_times_out_then_recovers() {
    let mut server = RedisServer::new();
    let store = resilient(&server, FailurePolicy::FailClosed).await;
    let load = Load::start(&store, 2);
    load.until_calls(10).await;
    let before = timed(&store).await.1.unwrap().decisions[0].used;

    server.pause();
    let paused = Instant::now();
    let outage = ride_outage(&store, paused, Duration::from_millis(300)).await;
    let timeouts = outage
        .answers
        .iter()
        .filter(|a| matches!(a, Err(StoreError::Timeout)))
        .count();
    assert!(timeouts >= 1, "{:?}", outage.answers);
    assert!(outage
        .answers
        .iter()
        .all(|a| matches!(a, Err(StoreError::Timeout | StoreError::BreakerOpen))));
    let (calls, slowest) = load.finish().await;
    assert!(
        slowest <= TIMEOUT + SANITY,
        "slowest loaded call {slowest:?}"
    );
    // Keep it frozen past a half-open probe, which times out and reopens:
    // calls get BreakerOpen until the cool-down ends, then the probe.
    let deadline = Instant::now() + COOL_DOWN + Duration::from_secs(10);
    let (took, probe) = loop {
        let (took, answer) = timed(&store).await;
        match answer {
            Err(StoreError::BreakerOpen) => {}
            other => break (took, other),
        }
        assert!(Instant::now() < deadline, "no half-open probe");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(matches!(probe, Err(StoreError::Timeout)), "{probe:?}");
    assert!(took <= TIMEOUT + SANITY);
    assert_eq!(store.breaker_state(), BreakerState::Open);

    server.resume();
    let resumed = Instant::now();
    let (recovery, used) = until_counted(&store, resumed).await;
    // The data survived; calls that timed out may still have been counted
    // when the server resumed (a timeout does not mean "not consumed").
    assert!(used > before, "{before} then {used}");
    println!(
        "SIGSTOP: breaker open {:?} after the pause ({timeouts} timeouts first); slowest call \
         while failing {:?}, while open {:?}; counting {:?} after SIGCONT; load: {calls} calls, \
         slowest {slowest:?}",
        outage.to_open, outage.slowest_failing, outage.slowest_open, recovery
    );
}
