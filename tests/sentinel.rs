//! Redis Sentinel (issue 16, item 5): a [`RedisStore`] connected with
//! `connect_sentinel` follows a failover, with the failure policies of
//! [`ResilientStore`] applying meanwhile.
//!
//! One master, one replica and three sentinels (quorum 2,
//! `down-after-milliseconds` 1000) on loopback. Two stores connect through
//! the sentinels: one fail-closed, one with an in-memory fallback, both with
//! a 100 ms timeout and the default breaker. Under continuous admissions the
//! master is killed (SIGKILL); the test measures how long until an admission
//! is counted again (on the promoted replica), and checks the counters
//! continued there: a tenant at its limit before the kill is admitted again
//! only as far as writes the failover lost explain (replication is
//! asynchronous: what the master acknowledged but had not sent to the
//! replica is gone).
//!
//! Run with `--nocapture` for the figures (lines starting with `FIGURES`).
#![cfg(feature = "redis-sentinel")]

#[path = "common/redis_server.rs"]
mod redis_server;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis_server::{poll, RedisSentinels, SENTINEL_MASTER};
use tower_tenancy::store::{
    Algorithm, BreakerState, Check, CounterStore, FailurePolicy, RedisStore, ResilientStore,
    StoreError,
};
use tower_tenancy::{MemoryStore, TenantId};

const TIMEOUT: Duration = Duration::from_millis(100);
const DOWN_AFTER: Duration = Duration::from_millis(1000);
/// The limit of the capped tenant (reached before the kill).
const CAP: u64 = 100;
/// Upper bound asserted for kill → first admission counted again: the
/// sentinels' 1 s, their vote and the promotion, the store finding the new
/// master, the breaker's 1 s cool-down — with room for a busy 2-core machine.
const RECOVERY_BOUND: Duration = Duration::from_secs(15);

/// One admission call as the caller saw it.
#[derive(Debug, Clone)]
struct Call {
    tenant: &'static str,
    sent: Instant,
    took: Duration,
    /// `Ok(allowed)`, or the error.
    answer: Result<bool, StoreError>,
}

impl Call {
    fn is(&self, allowed: bool) -> bool {
        matches!(self.answer, Ok(a) if a == allowed)
    }
}

type Log = Arc<Mutex<Vec<Call>>>;

fn check(limit: u64) -> Check {
    let hour = Algorithm::SlidingLog {
        window: Duration::from_secs(3600),
    };
    Check::new("api", hour, limit, 1)
}

fn limit_of(tenant: &str) -> u64 {
    if tenant == "capped" {
        CAP
    } else {
        1_000_000
    }
}

/// Admits each of `tenants` in turn, 2 ms apart, until `stop`.
fn load(
    store: Arc<dyn CounterStore>,
    tenants: &'static [&'static str],
    log: &Log,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let (log, stop) = (log.clone(), stop.clone());
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            for &tenant in tenants {
                let id: TenantId = tenant.parse().unwrap();
                let sent = Instant::now();
                let answer = store
                    .admit(&id, &[check(limit_of(tenant))])
                    .await
                    .map(|a| a.allowed());
                log.lock().push(Call {
                    tenant,
                    sent,
                    took: sent.elapsed(),
                    answer,
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

/// Polls `done` (blocking this worker; the load runs on the other) up to
/// `timeout`.
fn wait(timeout: Duration, done: impl FnMut() -> bool) -> Option<Duration> {
    tokio::task::block_in_place(|| poll(timeout, done))
}

fn count(log: &Log, f: impl Fn(&Call) -> bool) -> u64 {
    log.lock().iter().filter(|c| f(c)).count() as u64
}

fn zcard(server: &redis_server::RedisServer, key: &str) -> u64 {
    server.int(&["ZCARD", key]) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admissions_are_counted_on_the_promoted_replica_after_the_master_is_killed() {
    let started = Instant::now();
    let mut group = RedisSentinels::new(1, DOWN_AFTER);
    let ready = started.elapsed();
    assert_eq!(group.master_index(), Some(0));
    let sentinels = group.sentinel_urls();

    let closed_redis = RedisStore::connect_sentinel(SENTINEL_MASTER, sentinels.clone())
        .await
        .unwrap();
    let key = |tenant: &str| closed_redis.key(&tenant.parse().unwrap(), &check(1).algorithm, "api");
    let closed = ResilientStore::new(closed_redis.clone())
        .timeout(TIMEOUT)
        .policy(FailurePolicy::FailClosed);
    let local = Arc::new(MemoryStore::new());
    let fallback = ResilientStore::new(
        RedisStore::connect_sentinel(SENTINEL_MASTER, sentinels)
            .await
            .unwrap(),
    )
    .timeout(TIMEOUT)
    .fallback(local.clone());

    let (closed_log, fallback_log, raw_log): (Log, Log, Log) = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks: Vec<_> = (0..3)
        .map(|_| {
            load(
                Arc::new(closed.clone()),
                &["steady", "capped"],
                &closed_log,
                &stop,
            )
        })
        .collect();
    tasks.push(load(
        Arc::new(fallback.clone()),
        &["steady-fb"],
        &fallback_log,
        &stop,
    ));
    // The Redis store itself, without timeout, policy or breaker: when it
    // finds the new master.
    tasks.push(load(
        Arc::new(closed_redis.clone()),
        &["raw"],
        &raw_log,
        &stop,
    ));

    // Warm: the capped tenant reached its limit (refused by Redis).
    let warmed = wait(Duration::from_secs(30), || {
        count(&closed_log, |c| c.tenant == "capped" && c.is(false)) > 0
            && count(&closed_log, |c| c.tenant == "steady" && c.is(true)) >= 100
    });
    assert!(
        warmed.is_some(),
        "no load before the kill: {:?}",
        closed_log.lock().last()
    );

    group.server_mut(0).stop();
    let killed = Instant::now();
    // What the replica holds of the old master: read once its link is down
    // (it has applied every byte the master sent), before any promotion
    // (the sentinels wait `DOWN_AFTER` first).
    let replica = &group.servers()[1];
    let link_down = wait(Duration::from_secs(5), || {
        replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:down")
    });
    let replicated_capped = zcard(replica, &key("capped"));
    let replicated_steady = zcard(replica, &key("steady"));
    let replicated_fb = zcard(replica, &key("steady-fb"));
    let read_at = killed.elapsed();
    assert!(
        replica.cli(&["ROLE"]).starts_with("slave"),
        "the replica was promoted before it was read ({read_at:?} after the kill)"
    );
    assert!(link_down.is_some(), "the replica never saw its master go");

    let promoted = wait(Duration::from_secs(60), || group.master_index() == Some(1));
    let promoted_at = killed.elapsed();
    assert!(
        promoted.is_some(),
        "the sentinels promoted no replica within 60 s"
    );
    // The first admission of a call sent after the kill: counted by the
    // promoted replica (the old master is dead).
    let first_after = |log: &Log| {
        log.lock()
            .iter()
            .filter(|c| c.sent >= killed && c.answer.is_ok())
            .map(|c| c.sent + c.took - killed)
            .min()
    };
    let counted = wait(Duration::from_secs(60), || {
        first_after(&closed_log).is_some()
    });
    assert!(
        counted.is_some(),
        "no admission counted within 60 s of the kill"
    );
    let recovered = first_after(&closed_log).unwrap();
    let raw_recovered = first_after(&raw_log);
    // Some more load on the new master, and every breaker closed again.
    let mark = closed_log.lock().len();
    let settled = wait(Duration::from_secs(30), || {
        closed.breaker_state() == BreakerState::Closed
            && fallback.breaker_state() == BreakerState::Closed
            && closed_log.lock()[mark..]
                .iter()
                .filter(|c| c.tenant == "steady" && c.is(true))
                .count()
                >= 100
    });
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        settled.is_some(),
        "breakers {:?} / {:?}",
        closed.breaker_state(),
        fallback.breaker_state()
    );

    let new_master = &group.servers()[1];
    let before = |c: &Call| c.sent < killed;
    let after = |c: &Call| c.sent >= killed;
    let of = |t: &'static str| move |c: &Call| c.tenant == t;
    let admitted = |c: &Call| c.is(true);
    let refused_503 = |c: &Call| c.answer.is_err();
    let n = |f: &dyn Fn(&Call) -> bool| count(&closed_log, f);

    // Fail-closed: how the calls between the kill and the recovery failed.
    let outage: Vec<Call> = closed_log
        .lock()
        .iter()
        .filter(|c| after(c) && c.sent + c.took - killed < recovered)
        .cloned()
        .collect();
    assert!(!outage.is_empty());
    let kinds = |e: fn(&StoreError) -> bool| {
        outage
            .iter()
            .filter(|c| c.answer.as_ref().is_err_and(e))
            .count()
    };
    let (timeouts, breaker, backend) = (
        kinds(|e| matches!(e, StoreError::Timeout)),
        kinds(|e| matches!(e, StoreError::BreakerOpen)),
        kinds(|e| matches!(e, StoreError::Backend(_))),
    );

    // Capped tenant: at its limit before the kill; after it, admitted again
    // only as far as writes lost in the failover explain.
    let capped_before = n(&|c| of("capped")(c) && before(c) && admitted(c));
    let capped_after = n(&|c| of("capped")(c) && after(c) && admitted(c));
    let capped_refused_after = n(&|c| of("capped")(c) && after(c) && c.is(false));
    let lost_capped = capped_before.saturating_sub(replicated_capped);
    assert!(capped_before <= CAP, "{capped_before} admitted of {CAP}");
    assert!(
        capped_before + capped_after <= CAP + lost_capped,
        "over-admission: {capped_before} + {capped_after} admitted of {CAP}, \
         {replicated_capped} replicated before the kill"
    );
    assert!(
        capped_refused_after > 0,
        "the counter continued: refusals after the failover"
    );
    let capped_final = zcard(new_master, &key("capped"));
    assert!(capped_final <= CAP);
    assert!(capped_final >= replicated_capped + capped_after);

    // Steady tenant: the promoted replica's count continues from what was
    // replicated, and holds every admission answered after the kill (and at
    // most every call sent after it).
    let steady_before = n(&|c| of("steady")(c) && before(c) && admitted(c));
    let steady_after = n(&|c| of("steady")(c) && after(c) && admitted(c));
    let steady_sent_after = n(&|c| of("steady")(c) && after(c));
    let steady_final = zcard(new_master, &key("steady"));
    assert!(steady_final >= replicated_steady + steady_after);
    assert!(steady_final <= replicated_steady + steady_sent_after);
    let lost_steady = steady_before as i64 - replicated_steady as i64;

    // Fallback: every call answered; the local store admitted during the outage.
    let fb_errors = count(&fallback_log, |c| c.answer.is_err());
    let fb_calls = fallback_log.lock().len();
    assert_eq!(fb_errors, 0, "the fallback store answered every call");
    let local_admitted = local
        .peek(
            &"steady-fb".parse().unwrap(),
            &[check(limit_of("steady-fb"))],
        )
        .await
        .unwrap()[0]
        .used;
    assert!(
        local_admitted > 0,
        "the fallback admitted during the failover"
    );
    let fb_final = zcard(new_master, &key("steady-fb"));
    assert!(
        fb_final > replicated_fb,
        "the fallback store's tenant counted in Redis again"
    );

    println!(
        "FIGURES sentinel failover (1 master + 1 replica + 3 sentinels, down-after {DOWN_AFTER:?}, \
         100 ms timeout, default breaker; setup {ready:?}): sentinels name the replica \
         {promoted_at:?} after the kill; first admission counted again: fail-closed store \
         {recovered:?} after the kill, bare RedisStore {raw_recovered:?}; {} calls failed closed meanwhile ({timeouts} timeout, \
         {breaker} breaker open, {backend} backend error, {} total 503 after the kill); \
         capped tenant (limit {CAP}): {capped_before} admitted before, {replicated_capped} \
         replicated, {capped_after} admitted after ({capped_refused_after} refused), final \
         {capped_final}; steady tenant: {steady_before} admitted before, {replicated_steady} \
         replicated (lost {lost_steady}), {steady_after} admitted after, final {steady_final}; \
         fallback store: {fb_calls} calls, 0 errors, {local_admitted} admitted locally, \
         {replicated_fb} replicated and {fb_final} counted in Redis at the end; replica read \
         {read_at:?} after the kill; test took {:?}",
        outage.len(),
        n(&|c| after(c) && refused_503(c)),
        started.elapsed(),
    );
    assert!(
        recovered <= RECOVERY_BOUND,
        "admissions counted again only {recovered:?} after the kill"
    );
}
