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
//! A second test asks the sentinels for a failover (`SENTINEL FAILOVER`)
//! while the old master stays up: the sentinels demote it, and the stores
//! move to the new master. A third pauses the master (`SIGSTOP`): calls
//! only time out, and the stores follow the sentinels' announcement. A
//! fourth runs two instances of the demo with a `redis+sentinel://` URL.
//!
//! Run with `--nocapture` for the figures (lines starting with `FIGURES`).
#![cfg(feature = "redis-sentinel")]

#[path = "../examples/axum_server.rs"]
#[allow(dead_code)]
mod demo;
#[path = "common/http.rs"]
mod http_util;
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

/// The servers, the stores through the sentinels and their load.
struct Setup {
    started: Instant,
    /// How long the servers took to be ready.
    ready: Duration,
    group: RedisSentinels,
    redis: RedisStore,
    /// Fail-closed, over `redis`: tenants `steady` and `capped`.
    closed: ResilientStore<RedisStore>,
    /// With a fallback to `local`, over its own connection: `steady-fb`.
    fallback: ResilientStore<RedisStore>,
    local: Arc<MemoryStore>,
    closed_log: Log,
    fallback_log: Log,
    /// `redis` itself, without timeout, policy or breaker: `raw`.
    raw_log: Log,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Setup {
    /// Starts the servers and the load; returns once the capped tenant
    /// reached its limit (refused by Redis).
    async fn start() -> Self {
        let started = Instant::now();
        let group = RedisSentinels::new(1, DOWN_AFTER);
        let ready = started.elapsed();
        assert_eq!(group.master_index(), Some(0));
        let sentinels = group.sentinel_urls();
        let redis = RedisStore::connect_sentinel(SENTINEL_MASTER, sentinels.clone())
            .await
            .unwrap();
        let closed = ResilientStore::new(redis.clone())
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
                let store = Arc::new(closed.clone());
                load(store, &["steady", "capped"], &closed_log, &stop)
            })
            .collect();
        let store = Arc::new(fallback.clone());
        tasks.push(load(store, &["steady-fb"], &fallback_log, &stop));
        tasks.push(load(Arc::new(redis.clone()), &["raw"], &raw_log, &stop));
        let warmed = wait(Duration::from_secs(30), || {
            count(&closed_log, |c| c.tenant == "capped" && c.is(false)) > 0
                && count(&closed_log, |c| c.tenant == "steady" && c.is(true)) >= 100
        });
        assert!(
            warmed.is_some(),
            "no load before the fault: {:?}",
            closed_log.lock().last()
        );
        Setup {
            started,
            ready,
            group,
            redis,
            closed,
            fallback,
            local,
            closed_log,
            fallback_log,
            raw_log,
            stop,
            tasks,
        }
    }

    /// The counter key of `tenant`.
    fn key(&self, tenant: &str) -> String {
        self.redis
            .key(&tenant.parse().unwrap(), &check(1).algorithm, "api")
    }

    /// Waits (up to 60 s) for a call of the fail-closed store sent after
    /// `since` to be admitted, and returns when its answer came.
    fn counted_after(&self, since: Instant) -> Duration {
        let counted = wait(Duration::from_secs(60), || {
            first_ok_after(&self.closed_log, since).is_some()
        });
        assert!(counted.is_some(), "no admission counted within 60 s");
        first_ok_after(&self.closed_log, since).unwrap()
    }

    /// Lets 100 more admissions of `steady` through with every breaker
    /// closed again, then stops the load.
    async fn settle_and_stop(&mut self) {
        let mark = self.closed_log.lock().len();
        let settled = wait(Duration::from_secs(30), || {
            self.closed.breaker_state() == BreakerState::Closed
                && self.fallback.breaker_state() == BreakerState::Closed
                && self.closed_log.lock()[mark..]
                    .iter()
                    .filter(|c| c.tenant == "steady" && c.is(true))
                    .count()
                    >= 100
        });
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            t.await.unwrap();
        }
        assert!(
            settled.is_some(),
            "breakers {:?} / {:?}",
            self.closed.breaker_state(),
            self.fallback.breaker_state()
        );
    }

    /// The capped tenant after `since`, when the replica held `replicated`
    /// of its admissions and the old master took no more that were kept:
    /// admitted at most up to the limit from there, and refused by the new
    /// master (its counter continued). Returns (admitted, refused).
    fn capped_after(&self, since: Instant, replicated: u64) -> (u64, u64) {
        let after = |c: &Call| c.tenant == "capped" && c.sent >= since;
        let admitted = self.n(|c| after(c) && c.is(true));
        let refused = self.n(|c| after(c) && c.is(false));
        assert!(
            admitted <= CAP.saturating_sub(replicated),
            "over-admission: {admitted} admitted after the failover, {replicated} of {CAP} \
             replicated"
        );
        assert!(refused > 0, "the counter continued on the new master");
        (admitted, refused)
    }

    /// What the fallback's memory store admitted (`steady-fb`).
    async fn local_admitted(&self) -> u64 {
        let steady_fb = [check(limit_of("steady-fb"))];
        let local = self.local.peek(&"steady-fb".parse().unwrap(), &steady_fb);
        local.await.unwrap()[0].used
    }

    /// The fail-closed store's calls matching `f`.
    fn n(&self, f: impl Fn(&Call) -> bool) -> u64 {
        count(&self.closed_log, f)
    }

    /// The fallback store answered every call, and its memory store
    /// admitted some: how many calls, and how many admitted locally.
    async fn fallback_answered_everything(&self) -> (usize, u64) {
        let fb_errors = count(&self.fallback_log, |c| c.answer.is_err());
        assert_eq!(fb_errors, 0, "the fallback store answered every call");
        let local_admitted = self.local_admitted().await;
        assert!(
            local_admitted > 0,
            "the fallback admitted during the failover"
        );
        (self.fallback_log.lock().len(), local_admitted)
    }
}

/// When the first admission of a call sent after `since` was answered
/// (after `since`).
fn first_ok_after(log: &Log, since: Instant) -> Option<Duration> {
    log.lock()
        .iter()
        .filter(|c| c.sent >= since && c.answer.is_ok())
        .map(|c| c.sent + c.took - since)
        .min()
}

/// The largest time between two consecutive entries of the sliding log
/// at `key` on `server` (its scores are server times in ms).
fn largest_gap_ms(server: &redis_server::RedisServer, key: &str) -> Option<f64> {
    let out = server.cli(&["ZRANGE", key, "0", "-1", "WITHSCORES"]);
    let scores: Vec<f64> = out
        .lines()
        .skip(1)
        .step_by(2)
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    scores.windows(2).map(|w| w[1] - w[0]).reduce(f64::max)
}

/// How `calls` failed: (timeouts, open breaker, backend errors).
fn failures(calls: &[Call]) -> (usize, usize, usize) {
    let kind = |e: fn(&StoreError) -> bool| {
        calls
            .iter()
            .filter(|c| c.answer.as_ref().is_err_and(e))
            .count()
    };
    (
        kind(|e| matches!(e, StoreError::Timeout)),
        kind(|e| matches!(e, StoreError::BreakerOpen)),
        kind(|e| matches!(e, StoreError::Backend(_))),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admissions_are_counted_on_the_promoted_replica_after_the_master_is_killed() {
    let mut setup = Setup::start().await;
    setup.group.server_mut(0).stop();
    let killed = Instant::now();
    // What the replica holds of the old master: read once its link is down
    // (it has applied every byte the master sent), before any promotion
    // (the sentinels wait `DOWN_AFTER` first).
    let replica = &setup.group.servers()[1];
    let link_down = wait(Duration::from_secs(5), || {
        replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:down")
    });
    let replicated_capped = zcard(replica, &setup.key("capped"));
    let replicated_steady = zcard(replica, &setup.key("steady"));
    let replicated_fb = zcard(replica, &setup.key("steady-fb"));
    let read_at = killed.elapsed();
    assert!(
        replica.cli(&["ROLE"]).starts_with("slave"),
        "the replica was promoted before it was read ({read_at:?} after the kill)"
    );
    assert!(link_down.is_some(), "the replica never saw its master go");

    let promoted = wait(Duration::from_secs(60), || {
        setup.group.master_index() == Some(1)
    });
    let promoted_at = killed.elapsed();
    assert!(
        promoted.is_some(),
        "the sentinels promoted no replica within 60 s"
    );
    // The first admission of a call sent after the kill: counted by the
    // promoted replica (the old master is dead).
    let recovered = setup.counted_after(killed);
    let raw_recovered = first_ok_after(&setup.raw_log, killed);
    setup.settle_and_stop().await;

    let new_master = &setup.group.servers()[1];
    let before = |c: &Call| c.sent < killed;
    let after = |c: &Call| c.sent >= killed;
    let of = |t: &'static str| move |c: &Call| c.tenant == t;
    let admitted = |c: &Call| c.is(true);

    // Fail-closed: how the calls between the kill and the recovery failed.
    let outage: Vec<Call> = setup
        .closed_log
        .lock()
        .iter()
        .filter(|c| after(c) && c.sent + c.took - killed < recovered)
        .cloned()
        .collect();
    assert!(!outage.is_empty());
    let (timeouts, breaker, backend) = failures(&outage);

    // Capped tenant: at its limit before the kill; after it, admitted again
    // only as far as writes lost in the failover explain.
    let capped_before = setup.n(|c| of("capped")(c) && before(c) && admitted(c));
    let capped_after = setup.n(|c| of("capped")(c) && after(c) && admitted(c));
    let capped_refused_after = setup.n(|c| of("capped")(c) && after(c) && c.is(false));
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
    let capped_final = zcard(new_master, &setup.key("capped"));
    assert!(capped_final <= CAP);
    assert!(capped_final >= replicated_capped + capped_after);

    // Steady tenant: the promoted replica's count continues from what was
    // replicated, and holds every admission answered after the kill (and at
    // most every call sent after it).
    let steady_before = setup.n(|c| of("steady")(c) && before(c) && admitted(c));
    let steady_after = setup.n(|c| of("steady")(c) && after(c) && admitted(c));
    let steady_sent_after = setup.n(|c| of("steady")(c) && after(c));
    let steady_final = zcard(new_master, &setup.key("steady"));
    assert!(steady_final >= replicated_steady + steady_after);
    assert!(steady_final <= replicated_steady + steady_sent_after);
    let lost_steady = steady_before as i64 - replicated_steady as i64;

    let (fb_calls, local_admitted) = setup.fallback_answered_everything().await;
    let fb_final = zcard(new_master, &setup.key("steady-fb"));
    assert!(
        fb_final > replicated_fb,
        "the fallback store's tenant counted in Redis again"
    );

    println!(
        "FIGURES sentinel failover (1 master + 1 replica + 3 sentinels, down-after {DOWN_AFTER:?}, \
         100 ms timeout, default breaker; setup {:?}): sentinels name the replica \
         {promoted_at:?} after the kill; first admission counted again: fail-closed store \
         {recovered:?} after the kill, bare RedisStore {raw_recovered:?}; {} calls failed \
         closed meanwhile ({timeouts} timeout, {breaker} breaker open, {backend} backend \
         error, {} total 503 after the kill); capped tenant (limit {CAP}): {capped_before} \
         admitted before, {replicated_capped} replicated, {capped_after} admitted after \
         ({capped_refused_after} refused), final {capped_final}; steady tenant: \
         {steady_before} admitted before, {replicated_steady} replicated (lost \
         {lost_steady}), {steady_after} admitted after, final {steady_final}; fallback \
         store: {fb_calls} calls, 0 errors, {local_admitted} admitted locally, \
         {replicated_fb} replicated and {fb_final} counted in Redis at the end; replica \
         read {read_at:?} after the kill; test took {:?}",
        setup.ready,
        outage.len(),
        setup.n(|c| after(c) && c.answer.is_err()),
        setup.started.elapsed(),
    );
    // Nothing leaks: once the stores are dropped, their `+switch-master`
    // subscriptions (one per store) end, within the listener's 1 s check.
    let Setup {
        group,
        redis,
        closed,
        fallback,
        ..
    } = setup;
    assert_eq!(group.sentinel_subscribers(), 2);
    drop((redis, closed, fallback));
    let unsubscribed = wait(Duration::from_secs(10), || {
        group.sentinel_subscribers() == 0
    });
    assert!(
        unsubscribed.is_some(),
        "the stores' subscriptions outlived them"
    );
    assert!(
        recovered <= RECOVERY_BOUND,
        "admissions counted again only {recovered:?} after the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_failover_moves_the_counting_to_the_new_master() {
    let mut setup = Setup::start().await;
    // What the replica holds when the failover is asked for: the capped
    // tenant can be admitted after it at most up to the limit from there.
    let replica = &setup.group.servers()[1];
    let replicated_capped = zcard(replica, &setup.key("capped"));
    let asked = Instant::now();
    let answer = setup
        .group
        .sentinel(0)
        .cli(&["SENTINEL", "FAILOVER", SENTINEL_MASTER]);
    assert_eq!(answer.trim(), "OK");
    let promoted = wait(Duration::from_secs(60), || {
        setup.group.master_index() == Some(1)
    });
    assert!(promoted.is_some(), "no replica promoted within 60 s");
    let promoted_at = asked.elapsed();
    let old = &setup.group.servers()[0];
    let demoted = wait(Duration::from_secs(60), || {
        old.try_cli(&["ROLE"]).is_ok_and(|r| r.starts_with("slave"))
    });
    assert!(
        demoted.is_some(),
        "the old master was not demoted within 60 s"
    );
    let demoted_at = Instant::now();
    // Admitted after the demotion: by the new master (the old one is a
    // read-only replica now).
    let counted = setup.counted_after(demoted_at) + (demoted_at - asked);
    let raw_counted = first_ok_after(&setup.raw_log, demoted_at).map(|d| d + (demoted_at - asked));
    setup.settle_and_stop().await;

    // The longest time without an admission of the fail-closed store.
    let mut answered: Vec<Instant> = setup
        .closed_log
        .lock()
        .iter()
        .filter(|c| c.answer.is_ok())
        .map(|c| c.sent + c.took)
        .filter(|&t| t >= asked)
        .collect();
    answered.sort();
    let gap = answered
        .windows(2)
        .map(|w| w[1] - w[0])
        .chain(answered.first().map(|&t| t - asked))
        .max()
        .unwrap();
    let during: Vec<Call> = setup
        .closed_log
        .lock()
        .iter()
        .filter(|c| c.sent >= asked && c.answer.is_err())
        .cloned()
        .collect();
    let (timeouts, breaker, backend) = failures(&during);

    let (capped_after, capped_refused_after) = setup.capped_after(asked, replicated_capped);
    let new_master = &setup.group.servers()[1];
    let steady_after_demotion =
        setup.n(|c| c.tenant == "steady" && c.sent >= demoted_at && c.is(true));
    let steady_final = zcard(new_master, &setup.key("steady"));
    assert!(steady_final >= steady_after_demotion);
    // Admissions the new master does not know of: those the old master
    // took after the promotion, before the store switched. The sliding
    // log's scores are the admissions' server times: the largest gap in the
    // new master's log is how long the old master took them.
    let lost_window = largest_gap_ms(new_master, &setup.key("steady"));
    let steady_lost = setup.n(|c| c.tenant == "steady" && c.is(true)) as i64 - steady_final as i64;
    let fb_calls = setup.fallback_log.lock().len();
    let local_admitted = setup.local_admitted().await;
    assert_eq!(count(&setup.fallback_log, |c| c.answer.is_err()), 0);

    println!(
        "FIGURES sentinel requested failover (SENTINEL FAILOVER, old master up): replica \
         promoted {promoted_at:?} and old master demoted {:?} after the request; first \
         admission sent after the demotion answered {counted:?} after the request (bare \
         RedisStore {raw_counted:?}); longest time without an admission (fail-closed) \
         {gap:?}; {} calls failed ({timeouts} timeout, {breaker} breaker open, {backend} \
         backend error); capped tenant: {replicated_capped} replicated, {capped_after} \
         admitted after ({capped_refused_after} refused); steady tenant: {steady_final} counted \
         by the new master, {steady_lost} admissions lost (largest gap in its log \
         {lost_window:?} ms); fallback store: {fb_calls} calls, \
         0 errors, {local_admitted} admitted locally; test took {:?}",
        demoted_at - asked,
        during.len(),
        setup.started.elapsed(),
    );
    assert!(gap <= RECOVERY_BOUND, "no admission for {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_master_is_failed_over_and_the_stores_follow() {
    let mut setup = Setup::start().await;
    setup.group.server_mut(0).pause();
    let paused = Instant::now();
    // The paused master sends nothing more: the replica holds what it got.
    let replica = &setup.group.servers()[1];
    let replicated_capped = zcard(replica, &setup.key("capped"));
    assert!(
        replica.cli(&["ROLE"]).starts_with("slave"),
        "the replica was promoted before it was read"
    );
    let promoted = wait(Duration::from_secs(60), || {
        setup.group.master_index() == Some(1)
    });
    assert!(promoted.is_some(), "no replica promoted within 60 s");
    let promoted_at = paused.elapsed();
    // Calls to the paused master time out (the store sees no error): the
    // sentinels' `+switch-master` moves it.
    let recovered = setup.counted_after(paused);
    let raw_recovered = first_ok_after(&setup.raw_log, paused);
    setup.settle_and_stop().await;
    setup.group.server_mut(0).resume();

    let during: Vec<Call> = setup
        .closed_log
        .lock()
        .iter()
        .filter(|c| c.sent >= paused && c.answer.is_err())
        .cloned()
        .collect();
    let (timeouts, breaker, backend) = failures(&during);
    let (capped_after, capped_refused_after) = setup.capped_after(paused, replicated_capped);
    let (fb_calls, local_admitted) = setup.fallback_answered_everything().await;
    println!(
        "FIGURES sentinel failover of a paused master (SIGSTOP): sentinels name the replica \
         {promoted_at:?} after the pause; first admission counted again: fail-closed store \
         {recovered:?}, bare RedisStore {raw_recovered:?}; {} calls failed ({timeouts} \
         timeout, {breaker} breaker open, {backend} backend error); capped tenant: \
         {replicated_capped} replicated, {capped_after} admitted after \
         ({capped_refused_after} refused); fallback store: {fb_calls} calls, 0 errors, \
         {local_admitted} admitted locally; test took {:?}",
        during.len(),
        setup.started.elapsed(),
    );
    assert!(
        recovered <= RECOVERY_BOUND,
        "admissions counted again only {recovered:?} after the pause"
    );
}

/// Two instances of the demo (`examples/axum_server.rs`) with
/// `REDIS_URL=redis+sentinel://…/mymaster` share one count on the master the
/// sentinels name: tenant `acme` (60 calls a minute) gets exactly 60
/// admissions from both together; a URL without a master name is refused
/// with a message saying the form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_counts_on_the_master_named_by_a_sentinel_url() {
    let group = RedisSentinels::new(1, DOWN_AFTER);
    let hosts: Vec<String> = group
        .sentinel_urls()
        .iter()
        .map(|u| u.trim_start_matches("redis://").to_owned())
        .collect();
    let bad = demo::shared_store(
        &format!("redis+sentinel://{}", hosts.join(",")),
        Some("closed"),
        TIMEOUT,
    )
    .await
    .err()
    .expect("a URL without a master name is refused");
    assert!(bad.contains("redis+sentinel://host:port"), "{bad}");

    let url = format!("redis+sentinel://{}/{SENTINEL_MASTER}", hosts.join(","));
    let catalog =
        tower_tenancy::Catalog::from_toml_str(include_str!("../examples/plans.toml")).unwrap();
    let mut servers = Vec::new();
    for _ in 0..2 {
        // A generous timeout: this test is about where the count lives.
        let store = demo::shared_store(&url, Some("closed"), Duration::from_secs(5))
            .await
            .expect("the demo connects through the sentinels");
        let app = demo::demo(&catalog, "examples/plans.toml", "admin-secret", store);
        servers.push(http_util::TestServer::start(app).await);
    }
    let client = http_util::client();
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    for i in 0..80 {
        let url = servers[i % 2].url("/v1/me");
        let reply = http_util::get(&client, &url, &[("x-tenant-id", "acme")]).await;
        *statuses.entry(reply.status.as_u16()).or_default() += 1;
    }
    assert_eq!(
        statuses,
        [(200, 60), (429, 20)].into_iter().collect(),
        "two demo instances over one Sentinel master: {statuses:?}"
    );
    // The count is on the master: a store of its own reads 80 calls made, 60 counted.
    let redis = RedisStore::connect_sentinel(SENTINEL_MASTER, group.sentinel_urls())
        .await
        .unwrap();
    let minute = Algorithm::SlidingWindow {
        window: Duration::from_secs(60),
    };
    let api = Check::new("api_calls_per_minute", minute, 60, 0);
    let used = redis.peek(&"acme".parse().unwrap(), &[api]).await.unwrap();
    assert_eq!(used[0].used, 60, "{used:?}");
}
