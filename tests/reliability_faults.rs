//! Faults under load at the HTTP level (issue 8, part 2): two instances of
//! the demo (`examples/axum_server.rs`, its store as `REDIS_URL` /
//! `STORE_FAILURE` / `STORE_TIMEOUT_MS=100` would build it: Redis behind a
//! `ResilientStore` with a 100 ms timeout and the default breaker, 5
//! failures → 2 s open), each with its own Redis connection, under
//! continuous HTTP load from real clients while Redis is killed and
//! restarted, frozen with SIGSTOP, or — in a Redis Cluster with replicas —
//! the master serving the tenant is killed and a replica takes over.
//!
//! Asserted: no panic; every request answered, none slower than a sanity
//! bound of 2 s (below the 3 s outage: no request waits for Redis to come
//! back; the slowest and p99 are printed as figures); the failure policy
//! holds while Redis is away, timed from the confirmed fault (the process
//! reaped or stopped, PING unanswered) to the restart (fail-open
//! → 200, fail-closed → 503 problem+json `unavailable` with Retry-After,
//! fallback → 200 within each instance's local limits); and every instance
//! counts in Redis again within a few seconds of the recovery (measured:
//! bursts on a probe tenant until Redis counts every one of them).
//!
//! `TT_LONG=1` repeats each fault and makes the outages longer. Run with
//! `--nocapture` for the figures (lines starting with `FIGURES`).
#![cfg(feature = "redis")]

#[path = "../examples/axum_server.rs"]
#[allow(dead_code)]
mod demo;
#[path = "common/http.rs"]
mod http_util;
#[path = "common/redis_server.rs"]
mod redis_server;
#[path = "common/reliability.rs"]
mod rel;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use redis_server::{RedisCluster, RedisServer};
use rel::{drive, histogram, key, remaining, request, scale, unix_ms, Load, Shot};

const INSTANCES: usize = 2;
const TIMEOUT: Duration = Duration::from_millis(100);
/// No answer may take this long (a sanity bound, shorter than an outage:
/// a request that waited for Redis to come back would exceed it).
const SANITY: Duration = Duration::from_secs(2);
const BIG: u64 = 1_000_000;

/// `big`: the load; `small0`..`small15`: 20 a minute, to see local limits
/// under the fallback (one per outage); `probe`: bursts that show every instance counting in Redis;
/// `t0`..`t15`: tenants spread over the cluster's slots.
fn catalog() -> String {
    let mut c = format!(
        r#"
[[plans]]
name = "big"
rates = {{ api_calls_per_minute = {{ limit = {BIG}, window = "1m", algorithm = "sliding_log" }} }}
[[plans]]
name = "small"
rates = {{ api_calls_per_minute = {{ limit = 20, window = "1m", algorithm = "sliding_log" }} }}
[[tenants]]
id = "big"
plan = "big"
[[tenants]]
id = "probe"
plan = "big"
"#
    );
    for i in 0..16 {
        c.push_str(&format!("[[tenants]]\nid = \"t{i}\"\nplan = \"big\"\n"));
        c.push_str(&format!(
            "[[tenants]]\nid = \"small{i}\"\nplan = \"small\"\n"
        ));
    }
    c
}

fn log_key(tenant: &str) -> String {
    key(tenant, "sl", "api_calls_per_minute")
}

/// Continuous load on `tenant`: 3 clients per instance, 5 ms apart, until stopped.
fn start_load(
    bases: &[String],
    tenant: &'static str,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Shot>> {
    let load = Load {
        clients: 3,
        per_client: None,
        pause: Duration::from_millis(5),
        timeout: Duration::from_secs(5),
        stop: Some(stop.clone()),
        ..Load::default()
    };
    let bases = bases.to_vec();
    tokio::spawn(async move {
        drive(
            &bases,
            load,
            Arc::new(move |base, _| request(Method::GET, &format!("{base}/v1/me"), tenant)),
        )
        .await
    })
}

/// Bursts of 5 requests per instance on `tenant` until Redis counts all of
/// them (every instance is using Redis again); the time from `since`.
async fn until_all_count(
    bases: &[String],
    tenant: &str,
    zcard: impl Fn() -> u64,
    since: Instant,
) -> Duration {
    let per = 5;
    loop {
        let before = zcard();
        let t = tenant.to_owned();
        let shots = drive(
            bases,
            Load {
                clients: 1,
                per_client: Some(per),
                timeout: Duration::from_secs(5),
                ..Load::default()
            },
            Arc::new(move |base, _| request(Method::GET, &format!("{base}/v1/me"), &t)),
        )
        .await;
        let after = zcard();
        let all_ok = shots.iter().all(|s| s.status == Some(200));
        if all_ok && after == before + (per * bases.len()) as u64 {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(15),
            "Redis not counting every instance's requests 15 s after the recovery \
             ({before} → {after}, {})",
            histogram(&shots)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls (up to 20 s) until Redis has counted more requests of the load
/// than it has clients (`zcard`): then some client has had an answer and
/// sent again, so at least one answer arrived before the fault to come.
async fn until_answered_before(zcard: impl Fn() -> i64) {
    let clients = (3 * INSTANCES) as i64;
    rel::wait_until(Duration::from_secs(20), || zcard() > clients)
        .await
        .expect("the load counted in Redis");
}

/// An outage in Unix ms: the fault was caused after `before`, confirmed at
/// `down` (the process reaped or stopped, PING unanswered), and lasted at
/// least until `up`.
#[derive(Clone, Copy)]
struct Outage {
    before: f64,
    down: f64,
    up: f64,
}

impl Outage {
    /// Sent after the fault was confirmed and answered before it ended.
    fn contains(&self, s: &Shot) -> bool {
        s.sent_ms >= self.down && s.recv_ms <= self.up
    }
}

fn assert_policy(policy: &str, s: &Shot) {
    match policy {
        "open" | "fallback" => assert_eq!(s.status, Some(200), "{policy} during the outage: {s:?}"),
        "closed" => {
            assert_eq!(s.status, Some(503), "closed during the outage: {s:?}");
            assert_eq!(
                s.content_type.as_deref(),
                Some("application/problem+json"),
                "{s:?}"
            );
            assert_eq!(s.code.as_deref(), Some("unavailable"), "{s:?}");
            assert!(s.retry_after.is_some(), "503 without Retry-After: {s:?}");
        }
        _ => unreachable!(),
    }
}

/// Checks every shot and returns the figures.
fn check_shots(policy: &str, shots: &[Shot], outages: &[Outage]) -> String {
    rel::silence_deliberate_panics();
    for s in shots {
        assert!(s.status.is_some(), "no answer: {s:?}");
        assert!(s.took <= SANITY, "a request took {:?}: {s:?}", s.took);
    }
    let during: Vec<&Shot> = shots
        .iter()
        .filter(|s| outages.iter().any(|o| o.contains(s)))
        .collect();
    assert!(!during.is_empty(), "no request fell inside an outage");
    for s in &during {
        assert_policy(policy, s);
    }
    let first_fault = outages[0].before;
    let before: Vec<&Shot> = shots.iter().filter(|s| s.recv_ms < first_fault).collect();
    assert!(!before.is_empty());
    // Before the fault Redis counts; but on a busy machine one of its
    // answers may miss the 100 ms timeout, and the failure policy answers
    // that request, as configured (seen in a stress run: fail-open, 115 ms).
    let counted_before = before
        .iter()
        .filter(|s| s.status == Some(200) && remaining(s).is_some_and(|r| r < BIG))
        .count();
    for s in before
        .iter()
        .filter(|s| s.status != Some(200) || remaining(s) == Some(BIG))
    {
        assert_policy(policy, s);
    }
    assert!(
        counted_before > 0,
        "nothing counted in Redis before the fault"
    );
    let during_owned: Vec<Shot> = during.iter().map(|s| (*s).clone()).collect();
    let slowest_during = rel::slowest(&during_owned);
    format!(
        "{} requests [{}], {} while Redis was away [{}]; slowest {:?} (p99 {:?}), \
         slowest while away {slowest_during:?}",
        shots.len(),
        histogram(shots),
        during.len(),
        histogram(&during_owned),
        rel::slowest(shots),
        rel::p99(shots),
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    Kill,
    Pause,
}

async fn single_server_fault(policy: &'static str, fault: Fault) {
    let _serial = rel::SERIAL.lock().await;
    rel::silence_deliberate_panics();
    let panics = rel::UNEXPECTED_PANICS.load(Ordering::SeqCst);
    let started = Instant::now();
    let mut server = RedisServer::new();
    let insts =
        rel::start_demo_instances(INSTANCES, &catalog(), &server.url(), policy, TIMEOUT).await;
    let bases: Vec<String> = insts.iter().map(|i| i.url("")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&bases, "big", &stop);
    until_answered_before(|| server.int(&["ZCARD", &log_key("big")])).await;

    let cycles = scale(1, 4);
    let away = Duration::from_millis(scale(3000, 5000) as u64);
    let mut outages = Vec::new();
    let mut figures = Vec::new();
    let mut small = Vec::new();
    for cycle in 0..cycles {
        let before = unix_ms();
        // Both return once the fault is confirmed.
        match fault {
            Fault::Kill => server.stop(),
            Fault::Pause => server.pause(),
        }
        let down = unix_ms();
        if policy == "fallback" {
            // Local limits: 30 requests per instance on a 20/min tenant.
            let shots = drive(
                &bases,
                Load {
                    clients: 1,
                    per_client: Some(30),
                    ..Load::default()
                },
                Arc::new(move |base, _| {
                    request(
                        Method::GET,
                        &format!("{base}/v1/me"),
                        &format!("small{cycle}"),
                    )
                }),
            )
            .await;
            for i in 0..INSTANCES {
                let mine: Vec<&Shot> = shots.iter().filter(|s| s.instance == i).collect();
                let admitted = mine.iter().filter(|s| s.status == Some(200)).count();
                let refused = mine.iter().filter(|s| s.status == Some(429)).count();
                assert_eq!(
                    (admitted, refused),
                    (20, 10),
                    "fallback: instance {i} answered {}",
                    histogram(&shots)
                );
            }
            small.push(histogram(&shots));
        }
        tokio::time::sleep(away.saturating_sub(Duration::from_millis((unix_ms() - down) as u64)))
            .await;
        let up_instant = Instant::now();
        let up = unix_ms();
        match fault {
            Fault::Kill => server.start(),
            Fault::Pause => server.resume(),
        }
        outages.push(Outage { before, down, up });
        // Redis counts again (any instance): a restarted server is empty.
        let first = if fault == Fault::Kill {
            rel::wait_until(Duration::from_secs(15), || {
                server.int(&["ZCARD", &log_key("big")]) > 0
            })
            .await
        } else {
            None
        };
        let probe_key = log_key("probe");
        let all = until_all_count(
            &bases,
            "probe",
            || server.int(&["ZCARD", &probe_key]) as u64,
            up_instant,
        )
        .await;
        figures.push(format!(
            "away {:.0} ms; {}every instance counting in Redis {all:?} after the {}",
            up - down,
            first.map_or(String::new(), |f| format!(
                "Redis counting again {f:?} after the restart; "
            )),
            if fault == Fault::Kill {
                "restart"
            } else {
                "SIGCONT"
            }
        ));
    }
    stop.store(true, Ordering::Relaxed);
    let shots = load.await.unwrap();
    let summary = check_shots(policy, &shots, &outages);
    if policy == "open" {
        // While away: admitted and not counted (remaining = limit).
        for s in shots
            .iter()
            .filter(|s| outages.iter().any(|o| o.contains(s)))
        {
            assert_eq!(
                remaining(s),
                Some(BIG),
                "fail-open answers count nothing: {s:?}"
            );
        }
    }
    assert_eq!(
        rel::UNEXPECTED_PANICS.load(Ordering::SeqCst),
        panics,
        "a panic"
    );
    let what = match fault {
        Fault::Kill => "kill -9 + restart",
        Fault::Pause => "SIGSTOP + SIGCONT",
    };
    println!(
        "FIGURES faults {what}, fail-{policy}, {INSTANCES} instances, {cycles} cycle(s): {summary}"
    );
    for f in figures {
        println!("FIGURES faults {what}, fail-{policy}: {f}");
    }
    for s in small {
        println!(
            "FIGURES faults {what}, fail-{policy}: local limits while away, 30 requests per \
             instance on a 20/min tenant: [{s}] (20 admitted per instance)"
        );
    }
    println!(
        "FIGURES faults {what}, fail-{policy}: test took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_fail_open() {
    single_server_fault("open", Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_fail_closed() {
    single_server_fault("closed", Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_fallback() {
    single_server_fault("fallback", Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_fail_closed() {
    single_server_fault("closed", Fault::Pause).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_fallback() {
    single_server_fault("fallback", Fault::Pause).await;
}

/// A cluster of 3 masters and 3 replicas; the master serving the tenant
/// under load is killed; a replica takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_killed_replica_takes_over() {
    let _serial = rel::SERIAL.lock().await;
    rel::silence_deliberate_panics();
    let panics = rel::UNEXPECTED_PANICS.load(Ordering::SeqCst);
    let started = Instant::now();
    let mut cluster = RedisCluster::with_replicas(1);
    let setup = started.elapsed();
    let url = cluster.urls().join(",");
    let policy = "closed";
    let insts = rel::start_demo_instances(INSTANCES, &catalog(), &url, policy, TIMEOUT).await;
    let bases: Vec<String> = insts.iter().map(|i| i.url("")).collect();

    // The tenant under load, a probe tenant on the same master, another
    // tenant on another master.
    let tenants: Vec<&'static str> = vec![
        "t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8", "t9", "t10", "t11", "t12", "t13",
        "t14", "t15",
    ];
    let victim = tenants[0];
    let victim_node = cluster.index_for(&log_key(victim));
    let probe = *tenants[1..]
        .iter()
        .find(|t| cluster.index_for(&log_key(t)) == victim_node)
        .expect("a second tenant on the same master");
    let other = *tenants[1..]
        .iter()
        .find(|t| cluster.index_for(&log_key(t)) != victim_node)
        .expect("a tenant on another master");

    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&bases, victim, &stop);
    let load_other = start_load(&bases, other, &stop);
    let victim_node_ref = &cluster.nodes()[victim_node];
    until_answered_before(|| victim_node_ref.int(&["ZCARD", &log_key(victim)])).await;

    let before = unix_ms();
    let killed_at = Instant::now();
    // Returns once the process is reaped and PING goes unanswered.
    cluster.node_mut(victim_node).stop();
    let down = unix_ms();
    // A replica is promoted: another node serves the slot, and every
    // running node says cluster_state:ok.
    let victim_key = log_key(victim);
    let promoted = rel::wait_until(Duration::from_secs(30), || {
        cluster
            .try_index_for(&victim_key)
            .is_some_and(|i| i != victim_node)
    })
    .await
    .expect("no replica took over within 30 s");
    let ok = cluster
        .wait_ok(Duration::from_secs(30))
        .expect("cluster_state:ok after the failover");
    let failover = killed_at.elapsed();
    let up = unix_ms();
    let probe_key = log_key(probe);
    let cluster_ref = &cluster;
    let all = until_all_count(
        &bases,
        probe,
        || cluster_ref.node_for(&probe_key).int(&["ZCARD", &probe_key]) as u64,
        killed_at,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let shots = load.await.unwrap();
    let other_shots = load_other.await.unwrap();
    // No replica is promoted before the node timeout (2 s) has passed since
    // the kill: the failover measured ends later, and until 1.5 s after the
    // kill the slot certainly had no master.
    let no_master_until = before + 1500.0;
    assert!(
        up >= no_master_until,
        "failover over {:.0} ms after the kill, before the node timeout",
        up - before
    );
    // While the slot had no master: fail-closed answers.
    let summary = check_shots(
        policy,
        &shots,
        &[Outage {
            before,
            down,
            up: no_master_until,
        }],
    );
    for s in &other_shots {
        assert!(s.status.is_some(), "no answer: {s:?}");
        assert!(s.took <= SANITY, "a request took {:?}", s.took);
        assert!(matches!(s.status, Some(200 | 503)), "{s:?}");
    }
    let other_503 = other_shots.iter().filter(|s| s.status == Some(503)).count();
    let other_slowest = rel::slowest(&other_shots);
    assert_eq!(rel::UNEXPECTED_PANICS.load(Ordering::SeqCst), panics);
    println!(
        "FIGURES faults cluster failover (3 masters + 3 replicas, node timeout 2 s), \
         fail-{policy}, {INSTANCES} instances: cluster set up in {setup:?}; tenant {victim}: {summary}"
    );
    println!(
        "FIGURES faults cluster failover: replica promoted {promoted:?} after the kill \
         (cluster_state:ok after {failover:?}, {ok:?} of it waiting for ok); every instance \
         counting in Redis again {all:?} after the kill"
    );
    println!(
        "FIGURES faults cluster failover: tenant {other} on a healthy master: {} requests [{}], \
         {other_503} answered 503 (cluster-require-full-coverage yes: every node refuses while a slot has no master; tests/cluster_failover_breaker.rs runs without it), slowest {other_slowest:?}",
        other_shots.len(),
        histogram(&other_shots)
    );
    println!(
        "FIGURES faults cluster failover: test took {:?}",
        started.elapsed()
    );
}
