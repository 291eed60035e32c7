//! Soft-limit events once per cluster (issue 14, item 4): four instances
//! (four HTTP stacks on four loopback ports, each with its own store
//! connection and its own hook) share one store, many concurrent requests
//! cross the 80 % threshold of a rate limit and of a daily quota, and the
//! hooks of all four fire exactly once per tenant, rule and window (or
//! period) in total. The store deduplicates in the admission's own call.
//! A new window fires again; a new day fires the quota again.
//!
//! Against a real `redis-server`, a real 3-master Redis Cluster (both
//! started by the test), and the memory store shared by four stacks of one
//! process. Every store runs on a [`ManualClock`]: windows and days pass
//! when the test moves the clock, not by sleeping.
#![cfg(feature = "redis")]

#[path = "common/http.rs"]
mod http_util;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use parking_lot::Mutex;
use redis_server::{RedisCluster, RedisServer};
use tower_tenancy::layer::soft_limit::SoftLimitEvent;
use tower_tenancy::resolve::HeaderResolver;
use tower_tenancy::store::{
    Algorithm, Check, CounterStore, DenyCache, ManualClock, RedisStore, ResilientStore,
};
use tower_tenancy::{
    AdmissionLayer, Catalog, MemoryDirectory, MemoryStore, Period, Rule, TenancyLayer,
};

const INSTANCES: usize = 4;
/// 2026-11-23T01:00:00Z: far from midnight, so that the daily quota's
/// period is the same for the whole first round.
const T0: u64 = 1_795_395_600_000;
const DAY_MS: u64 = 86_400_000;

/// `api`: 100 per minute (the default sliding window); `runs`: 120 per day.
/// A round of 4 × 6 × 25 = 600 requests per tenant admits 100 (the rate
/// limit), which brings `runs` to 100 of 120: both cross 80 %.
const CATALOG: &str = r#"
[[plans]]
name = "team"
rates = { api = { limit = 100, window = "1m" } }
quotas = { runs = { limit = 120, period = "day" } }

[[tenants]]
id = "acme"
plan = "team"
[[tenants]]
id = "globex"
plan = "team"
"#;

enum Shared {
    Memory,
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Shared {
    /// One store per instance (its own connection), all on `clock`.
    async fn stores(&self, clock: &Arc<ManualClock>) -> Vec<Arc<dyn CounterStore>> {
        let mut stores: Vec<Arc<dyn CounterStore>> = Vec::new();
        let memory = Arc::new(MemoryStore::with_clock(clock.clone()));
        for _ in 0..INSTANCES {
            stores.push(match self {
                Shared::Memory => memory.clone(),
                Shared::Single(s) => Arc::new(
                    RedisStore::connect(s.url())
                        .await
                        .expect("connect")
                        .clock(clock.clone()),
                ),
                Shared::Cluster(c) => Arc::new(
                    RedisStore::connect_cluster(c.urls())
                        .await
                        .expect("connect")
                        .clock(clock.clone()),
                ),
            });
        }
        stores
    }
}

/// (instance, event) of every hook call of every instance.
type Events = Arc<Mutex<Vec<(usize, SoftLimitEvent)>>>;

async fn start(shared: &Shared, clock: &Arc<ManualClock>) -> (Vec<http_util::TestServer>, Events) {
    let catalog = Catalog::from_toml_str(CATALOG).unwrap();
    let dir = MemoryDirectory::from_catalog(&catalog);
    let events: Events = Arc::default();
    let mut servers = Vec::new();
    for (instance, store) in shared.stores(clock).await.into_iter().enumerate() {
        let seen = events.clone();
        let admission = AdmissionLayer::new(store)
            .rule(Rule::rate("api"))
            .rule(Rule::quota("runs"))
            .soft_limit(80, move |event| seen.lock().push((instance, event.clone())));
        let app = Router::new()
            .route("/x", get(|| async { "ok" }).route_layer(admission))
            .layer(TenancyLayer::new(
                HeaderResolver::new("x-tenant-id"),
                dir.clone(),
            ));
        servers.push(http_util::TestServer::start(app).await);
    }
    (servers, events)
}

/// 6 clients per instance, 25 requests each, alternating the two tenants;
/// returns the number admitted per tenant.
async fn round(servers: &[http_util::TestServer]) -> [usize; 2] {
    let client = http_util::client();
    let mut tasks = Vec::new();
    for server in servers {
        for c in 0..6 {
            let (client, url) = (client.clone(), server.url("/x"));
            tasks.push(tokio::spawn(async move {
                let mut admitted = [0; 2];
                for i in 0..25 {
                    let t = (c + i) % 2;
                    let tenant = ["acme", "globex"][t];
                    let r = http_util::get(&client, &url, &[("x-tenant-id", tenant)]).await;
                    assert!(r.status == 200 || r.status == 429, "{}", r.status);
                    admitted[t] += usize::from(r.status == 200);
                }
                admitted
            }));
        }
    }
    let mut admitted = [0; 2];
    for task in tasks {
        let a = task.await.unwrap();
        admitted[0] += a[0];
        admitted[1] += a[1];
    }
    admitted
}

/// The events so far per (tenant, policy), checking each one's fields.
fn tally(events: &Events) -> [[usize; 2]; 2] {
    let mut n = [[0; 2]; 2];
    for (instance, e) in events.lock().iter() {
        assert!(*instance < INSTANCES);
        let t = ["acme", "globex"]
            .iter()
            .position(|t| e.tenant.as_str() == *t)
            .expect("tenant");
        let (p, limit) = match e.policy.as_str() {
            "api" => (0, 100),
            "runs" => (1, 120),
            other => panic!("event for {other}"),
        };
        assert_eq!(e.limit, limit, "{e:?}");
        assert_eq!(e.threshold_percent, 80, "{e:?}");
        assert!(e.used * 100 >= limit * 80 && e.used <= limit, "{e:?}");
        n[t][p] += 1;
    }
    n
}

async fn once_per_cluster(shared: Shared) {
    let clock = Arc::new(ManualClock::new(T0));
    let (servers, events) = start(&shared, &clock).await;

    // Round 1: both rules cross, for both tenants.
    assert_eq!(round(&servers).await, [100, 100]);
    assert_eq!(tally(&events), [[1, 1], [1, 1]], "{:#?}", events.lock());

    // A window later (70 s: past every sub-bucket), the same day: `runs`
    // reaches its limit after 20 more and stays silent (crossed this day
    // already); `api` counts only those 20, below its threshold.
    clock.advance_ms(70_000);
    assert_eq!(round(&servers).await, [20, 20], "runs: 100 + 20 = 120");
    assert_eq!(tally(&events), [[1, 1], [1, 1]], "{:#?}", events.lock());

    // The next day (a new window too): both cross again, once.
    clock.advance_ms(DAY_MS);
    assert_eq!(round(&servers).await, [100, 100]);
    assert_eq!(tally(&events), [[2, 2], [2, 2]], "{:#?}", events.lock());
    // The hooks of several instances took part.
    let instances: std::collections::HashSet<usize> =
        events.lock().iter().map(|(i, _)| *i).collect();
    assert!(!instances.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_limit_fires_once_across_four_instances_memory() {
    once_per_cluster(Shared::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_limit_fires_once_across_four_instances_redis() {
    once_per_cluster(Shared::Single(RedisServer::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_limit_fires_once_across_four_instances_redis_cluster() {
    once_per_cluster(Shared::Cluster(RedisCluster::new())).await;
}

/// Store level: every windowed algorithm with a 50 % threshold of a limit
/// of 4 reports the crossing on the second admission only, memory and
/// Redis alike, and again after a window.
async fn crossing_bits(store: &dyn CounterStore, clock: &ManualClock) {
    let w = Duration::from_secs(10);
    let checks = [
        Check::new("sb", Algorithm::SlidingWindow { window: w }, 4, 1).soft(50),
        Check::new("sl", Algorithm::SlidingLog { window: w }, 4, 1).soft(50),
        Check::new("sw", Algorithm::SlidingWindowApprox { window: w }, 4, 1).soft(50),
        Check::new(
            "gc",
            Algorithm::Gcra {
                window: w,
                burst: 4,
            },
            4,
            1,
        )
        .soft(50),
        Check::new(
            "cal",
            Algorithm::Calendar {
                period: Period::Hour,
            },
            8,
            1,
        )
        .soft(25),
        // Not tracked: no threshold, and concurrency has no window.
        Check::new("plain", Algorithm::SlidingWindow { window: w }, 4, 1),
        Check::new("cc", Algorithm::Concurrency { lease_ttl: w }, 10, 1).soft(50),
    ];
    let acme = "acme".parse().unwrap();
    let mut bits = Vec::new();
    for _ in 0..3 {
        let admission = store.admit(&acme, &checks).await.unwrap();
        assert!(admission.allowed());
        bits.push(
            admission
                .soft_crossed_bits
                .expect("the store records crossings"),
        );
    }
    // The second admission (2 of 4; the quota: 2 of 8) crosses, once.
    assert_eq!(bits, [0, 0b1_1111, 0]);
    // A window later (and past the sub-buckets): the rate rules cross
    // again on their second admission; the hourly quota (at 4 of 8) not.
    clock.advance_ms(20_000);
    let mut bits = Vec::new();
    for _ in 0..2 {
        bits.push(store.admit(&acme, &checks).await.unwrap().soft_crossed_bits);
    }
    assert_eq!(bits, [Some(0), Some(0b1111)]);
    // A peek never crosses, nor does a refused batch.
    let full = [Check::new("sl", Algorithm::SlidingLog { window: w }, 4, 3).soft(50)];
    let refused = store.admit(&acme, &full).await.unwrap();
    assert!(!refused.allowed());
    assert_eq!(refused.soft_crossed_bits, Some(0));
}

/// A rate limit and a quota of the same name (a plan may have both) keep
/// a mark each: both cross on the same admission. (With one mark per name,
/// the second would have been taken for a repeat: bits `0b01`.)
async fn same_name_rate_and_quota(store: &dyn CounterStore) {
    let checks = [
        Check::new(
            "api",
            Algorithm::SlidingWindow {
                window: Duration::from_secs(10),
            },
            4,
            1,
        )
        .soft(50),
        Check::new(
            "api",
            Algorithm::Calendar {
                period: Period::Hour,
            },
            4,
            1,
        )
        .soft(50),
    ];
    let tenant = "samename".parse().unwrap();
    let mut bits = Vec::new();
    for _ in 0..3 {
        bits.push(
            store
                .admit(&tenant, &checks)
                .await
                .unwrap()
                .soft_crossed_bits,
        );
    }
    assert_eq!(bits, [Some(0), Some(0b11), Some(0)]);
}

#[tokio::test]
async fn same_name_rate_and_quota_memory() {
    let clock = Arc::new(ManualClock::new(T0));
    same_name_rate_and_quota(&MemoryStore::with_clock(clock)).await;
}

#[tokio::test]
async fn same_name_rate_and_quota_redis() {
    let server = RedisServer::new();
    let clock = Arc::new(ManualClock::new(T0));
    let store = RedisStore::connect(server.url())
        .await
        .unwrap()
        .clock(clock);
    same_name_rate_and_quota(&store).await;
    for mark in ["tt:{samename}:sf:api", "tt:{samename}:sfq:api"] {
        let ttl = server.cli(&["PTTL", mark]);
        assert!(ttl.trim().parse::<i64>().unwrap() > 0, "{mark}: {ttl}");
    }
}

#[tokio::test]
async fn crossing_bits_memory() {
    let clock = Arc::new(ManualClock::new(T0));
    let store = MemoryStore::with_clock(clock.clone());
    crossing_bits(&store, &clock).await;
}

#[tokio::test]
async fn crossing_bits_redis() {
    let server = RedisServer::new();
    let clock = Arc::new(ManualClock::new(T0));
    let store = RedisStore::connect(server.url())
        .await
        .unwrap()
        .clock(clock.clone());
    crossing_bits(&store, &clock).await;
    // The marks live in the tenant's hash slot, next to the counters.
    let mark = server.cli(&["PTTL", "tt:{acme}:sf:sb"]);
    assert!(mark.trim().parse::<i64>().unwrap() > 0, "{mark}");
}

/// Through the demo's wrappers (a `DenyCache` around a `ResilientStore`
/// with a local fallback): the store's crossings pass through; with Redis
/// down, the fallback memory store records them (once per instance while
/// the shared store is unreachable, as the README says).
#[tokio::test]
async fn crossing_bits_through_wrappers_and_on_fallback() {
    let mut server = RedisServer::new();
    let clock = Arc::new(ManualClock::new(T0));
    let redis = RedisStore::connect(server.url())
        .await
        .unwrap()
        .clock(clock.clone());
    let store = DenyCache::new(
        ResilientStore::new(redis)
            .timeout(Duration::from_secs(5))
            .fallback(MemoryStore::with_clock(clock.clone())),
    );
    crossing_bits(&store, &clock).await;
    assert!(server.int(&["EXISTS", "tt:{acme}:sf:gc"]) == 1);
    server.stop();
    clock.advance_ms(3_600_000);
    // The deny cache still refuses the last batch of the first pass until
    // its Retry-After in real time (10 s), and a cached refusal records no
    // crossings: forget it, so that the fallback answers the second pass.
    // (This test passed before only when the calls to the stopped server
    // took longer than that: two 5 s timeouts over one connection.)
    store.invalidate_all();
    crossing_bits(&store, &clock).await;
}
