//! The lean scripts called as Redis functions (`FCALL`), against real
//! servers started by the tests: the three-rule plan (`plan.lua`) and a
//! batch of one sliding window (`window.lua`). One `FCALL` per admission,
//! each library loaded by the store when a server lacks it (a new or
//! flushed server, every master of a Cluster), and `EVALSHA` of the same
//! scripts where the server runs no functions (here: `FCALL` renamed away,
//! as on Redis 6.2 it is unknown), decided alike; after a Cluster failover
//! the promoted replica has the library (`FUNCTION LOAD` is replicated).
#![cfg(feature = "redis")]

#[path = "common/redis_server.rs"]
mod redis_server;

use std::time::Duration;

use redis_server::{RedisCluster, RedisServer};
use tower_tenancy::store::{Algorithm, Check, CounterStore, RedisStore};
use tower_tenancy::{Period, TenantId};

/// Rate 5 per minute, a daily quota of `quota`, 2 concurrent.
fn plan(quota: u64) -> [Check; 3] {
    [
        Check::new(
            "rate",
            Algorithm::SlidingWindow {
                window: Duration::from_secs(60),
            },
            5,
            1,
        ),
        Check::new(
            "daily",
            Algorithm::Calendar {
                period: Period::Day,
            },
            quota,
            1,
        ),
        Check::new(
            "conc",
            Algorithm::Concurrency {
                lease_ttl: Duration::from_secs(300),
            },
            2,
            1,
        ),
    ]
}

/// One sliding-window check of `limit` per minute (its own key, not the
/// plan's window): what the store sends to `window.lua`.
fn one(limit: u64) -> [Check; 1] {
    [Check::new(
        "one",
        Algorithm::SlidingWindow {
            window: Duration::from_secs(60),
        },
        limit,
        1,
    )]
}

/// Admits one check (`one(limit)`) `n` times for `tenant`: (allowed, used)
/// of each.
async fn run_one(store: &RedisStore, tenant: &str, limit: u64, n: usize) -> Vec<(bool, u64)> {
    let tenant: TenantId = tenant.parse().unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let a = store.admit(&tenant, &one(limit)).await.unwrap();
        assert_eq!(a.decisions.len(), 1);
        out.push((a.decisions[0].allowed, a.decisions[0].used));
    }
    out
}

/// What `run_one(.., 3, 5)` decides on a fresh key.
fn expected_one() -> Vec<(bool, u64)> {
    vec![(true, 1), (true, 2), (true, 3), (false, 3), (false, 3)]
}

/// The libraries on a server (`FUNCTION LIST`'s names).
fn libraries(server: &RedisServer) -> Vec<String> {
    let out = server.cli(&["FUNCTION", "LIST"]);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter(|w| w[0] == "library_name")
        .map(|w| w[1].to_owned())
        .collect()
}

/// Admits the plan `n` times for `tenant`, keeping the leases (so the
/// concurrency limit refuses from the third on); the decisions, as
/// (allowed, used) per check, and whether each admission was allowed.
async fn run(store: &RedisStore, tenant: &str, quota: u64, n: usize) -> Vec<Vec<(bool, u64)>> {
    let tenant: TenantId = tenant.parse().unwrap();
    let mut leases = Vec::new();
    let mut out = Vec::new();
    for _ in 0..n {
        let a = store.admit(&tenant, &plan(quota)).await.unwrap();
        out.push(a.decisions.iter().map(|d| (d.allowed, d.used)).collect());
        leases.push(a.lease);
    }
    out
}

/// What the plan decides in `run(.., 3, 4)` on fresh keys: two admissions,
/// then two refusals by the concurrency limit (the two leases are held),
/// which consume nothing.
fn expected() -> Vec<Vec<(bool, u64)>> {
    vec![
        vec![(true, 1), (true, 1), (true, 1)],
        vec![(true, 2), (true, 2), (true, 2)],
        vec![(true, 2), (true, 2), (false, 2)],
        vec![(true, 2), (true, 2), (false, 2)],
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_fcall_per_admission_and_the_library_loaded_again_when_flushed() {
    let server = RedisServer::new();
    let store = RedisStore::connect(server.url()).await.unwrap();
    assert!(libraries(&server).is_empty());
    // The first admission finds no function: the store loads its library.
    assert_eq!(run(&store, "t1", 3, 4).await, expected());
    let libs = libraries(&server);
    assert_eq!(libs.len(), 1, "{libs:?}");
    assert!(libs[0].starts_with("tt_plan_"), "{libs:?}");

    // Steady state: one FCALL per admission, nothing else from the client.
    server.cli(&["CONFIG", "RESETSTAT"]);
    assert_eq!(run(&store, "t2", 3, 4).await, expected());
    assert_eq!(server.command_calls("fcall"), 4);
    assert_eq!(server.command_calls("evalsha"), 0);
    assert_eq!(server.command_calls("function|load"), 0);

    // A flushed server (or a new master): loaded again, the counts kept.
    server.cli(&["FUNCTION", "FLUSH"]);
    let again = run(&store, "t2", 10, 1).await;
    // (The leases of t2 were dropped: released in the same call.)
    assert_eq!(again, vec![vec![(true, 3), (true, 3), (true, 1)]]);
    assert_eq!(libraries(&server), libs);
    assert_eq!(server.command_calls("function|load"), 1);
    assert_eq!(server.command_calls("evalsha"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_check_is_one_fcall_and_its_library_loaded_again_when_flushed() {
    let server = RedisServer::new();
    let store = RedisStore::connect(server.url()).await.unwrap();
    // The first one-check admission finds no function: the store loads the
    // window's library (and only that one).
    assert_eq!(run_one(&store, "w1", 3, 5).await, expected_one());
    let libs = libraries(&server);
    assert_eq!(libs.len(), 1, "{libs:?}");
    assert!(libs[0].starts_with("tt_window_"), "{libs:?}");

    // Steady state: one FCALL per admission, allowed or refused, and
    // nothing else from the client.
    server.cli(&["CONFIG", "RESETSTAT"]);
    assert_eq!(run_one(&store, "w2", 3, 5).await, expected_one());
    assert_eq!(server.command_calls("fcall"), 5);
    assert_eq!(server.command_calls("evalsha"), 0);
    assert_eq!(server.command_calls("eval"), 0);
    assert_eq!(server.command_calls("function|load"), 0);

    // The plan's library next to it: two libraries, each called by its
    // batches.
    assert_eq!(run(&store, "w3", 3, 4).await, expected());
    let mut both = libraries(&server);
    both.sort();
    assert_eq!(both.len(), 2, "{both:?}");
    assert!(both[0].starts_with("tt_plan_") && both[1].starts_with("tt_window_"));
    server.cli(&["CONFIG", "RESETSTAT"]);
    assert_eq!(
        run_one(&store, "w3", 10, 2).await,
        vec![(true, 1), (true, 2)]
    );
    assert_eq!(run(&store, "w4", 3, 1).await, expected()[..1].to_vec());
    assert_eq!(server.command_calls("fcall"), 3);
    assert_eq!(server.command_calls("evalsha"), 0);

    // A flushed server: the window's library loaded again by its next call,
    // the count kept; the plan's by the plan's next call.
    server.cli(&["FUNCTION", "FLUSH"]);
    server.cli(&["CONFIG", "RESETSTAT"]);
    assert_eq!(run_one(&store, "w2", 4, 1).await, vec![(true, 4)]);
    assert_eq!(libraries(&server), libs);
    assert_eq!(server.command_calls("function|load"), 1);
    // (The first FCALL answered "Function not found", then the second.)
    assert_eq!(server.command_calls("fcall"), 2);
    assert_eq!(server.command_calls("evalsha"), 0);
    assert_eq!(run_one(&store, "w2", 4, 1).await, vec![(false, 4)]);
    assert_eq!(server.command_calls("function|load"), 1);
    assert_eq!(server.command_calls("fcall"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fcall_the_store_falls_back_to_evalsha_once_for_good() {
    // As on Redis 6.2, FCALL is an unknown command here.
    let server = RedisServer::with_args(&["--rename-command", "FCALL", "fcall-renamed-away"]);
    let store = RedisStore::connect(server.url()).await.unwrap();
    assert_eq!(run(&store, "t1", 3, 4).await, expected());
    // Learnt once: every later admission is one EVALSHA, no FCALL tried.
    server.cli(&["CONFIG", "RESETSTAT"]);
    assert_eq!(run(&store, "t2", 3, 4).await, expected());
    assert_eq!(server.command_calls("evalsha"), 4);
    assert_eq!(server.command_calls("fcall-renamed-away"), 0);
    // (No error either: the unknown FCALL is not sent again.)
    let errors = server.info("errorstats");
    assert!(errors.is_empty(), "{errors:?}");
    // One-check batches too: learnt by the plan, no FCALL tried for them.
    assert_eq!(run_one(&store, "w1", 3, 5).await, expected_one());
    // (Plus one: window.lua's first EVALSHA answered NOSCRIPT, then
    // `SCRIPT LOAD` and the call again.)
    assert_eq!(server.command_calls("evalsha"), 4 + 5 + 1);
    assert_eq!(server.command_calls("script|load"), 1);
    // (No unknown command: only that NOSCRIPT.)
    let errors = server.info("errorstats");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "errorstat_NOSCRIPT", "{errors:?}");
    assert!(libraries(&server).is_empty());

    // A store whose first call is a one-check batch learns it there, once.
    let store = RedisStore::connect(server.url()).await.unwrap();
    assert_eq!(run_one(&store, "w2", 3, 5).await, expected_one());
    server.cli(&["CONFIG", "RESETSTAT"]);
    assert_eq!(run_one(&store, "w3", 3, 5).await, expected_one());
    assert_eq!(run(&store, "t3", 3, 4).await, expected());
    assert_eq!(server.command_calls("evalsha"), 5 + 4);
    assert_eq!(server.command_calls("fcall-renamed-away"), 0);
    let errors = server.info("errorstats");
    assert!(errors.is_empty(), "{errors:?}");
    assert!(libraries(&server).is_empty());
}

async fn cluster_store(cluster: &RedisCluster) -> RedisStore {
    let client = redis::cluster::ClusterClient::builder(cluster.urls())
        .response_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    RedisStore::from_cluster_connection(client.get_async_connection().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_loads_the_library_on_every_master_and_calls_by_key() {
    let cluster = RedisCluster::new();
    let client = redis::cluster::ClusterClient::builder(cluster.urls())
        .response_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let store = RedisStore::from_cluster_connection(client.get_async_connection().await.unwrap());
    // A tenant on each master.
    let node_of = |t: &str| cluster.index_for(&format!("tt:{{{t}}}:sb2:rate"));
    let mut tenants: Vec<String> = Vec::new();
    for i in 0.. {
        let t = format!("tenant{i}");
        if !tenants.iter().any(|u| node_of(u) == node_of(&t)) {
            tenants.push(t);
        }
        if tenants.len() == cluster.nodes().len() {
            break;
        }
    }
    assert_eq!(run(&store, &tenants[0], 3, 4).await, expected());
    for node in cluster.nodes() {
        assert_eq!(libraries(node).len(), 1, "port {}", node.port());
    }
    for node in cluster.nodes() {
        node.cli(&["CONFIG", "RESETSTAT"]);
    }
    for t in &tenants[1..] {
        assert_eq!(run(&store, t, 3, 4).await, expected());
    }
    assert_eq!(
        cluster.command_calls("fcall"),
        4 * (tenants.len() as u64 - 1)
    );
    assert_eq!(cluster.command_calls("evalsha"), 0);
    // Flushed everywhere: loaded again on the first call.
    for node in cluster.nodes() {
        node.cli(&["FUNCTION", "FLUSH"]);
    }
    for t in &tenants {
        let got = run(&store, t, 10, 1).await;
        assert_eq!(got, vec![vec![(true, 3), (true, 3), (true, 1)]], "{t}");
    }
    // Loaded once, on every master, by the first call.
    assert_eq!(cluster.command_calls("function|load"), 3);
    assert_eq!(cluster.command_calls("evalsha"), 0);

    // One-check batches: the window's library, loaded on every master by
    // the first call, then one FCALL per admission on the tenant's master.
    for node in cluster.nodes() {
        node.cli(&["CONFIG", "RESETSTAT"]);
    }
    for t in &tenants {
        assert_eq!(run_one(&store, t, 3, 5).await, expected_one(), "{t}");
    }
    assert_eq!(cluster.command_calls("function|load"), 3);
    assert_eq!(cluster.command_calls("fcall"), 5 * tenants.len() as u64 + 1);
    assert_eq!(cluster.command_calls("evalsha"), 0);
    for node in cluster.nodes() {
        let mut libs = libraries(node);
        libs.sort();
        assert_eq!(libs.len(), 2, "port {}: {libs:?}", node.port());
        assert!(libs[1].starts_with("tt_window_"), "{libs:?}");
    }
    for (t, node) in tenants
        .iter()
        .map(|t| (t, cluster.node_for(&format!("tt:{{{t}}}:sb2:rate"))))
    {
        let before = node.command_calls("fcall");
        assert_eq!(run_one(&store, t, 10, 1).await, vec![(true, 4)], "{t}");
        assert_eq!(node.command_calls("fcall"), before + 1, "{t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_the_promoted_replica_calls_the_library_it_has() {
    let mut cluster = RedisCluster::with_replicas(1);
    let store = cluster_store(&cluster).await;
    let key = "tt:{victim}:sb2:rate";
    assert_eq!(
        run(&store, "victim", 10, 1).await,
        vec![vec![(true, 1), (true, 1), (true, 1)]]
    );
    let victim = cluster.index_for(key);
    cluster.node_mut(victim).stop();
    let promoted = redis_server::poll(Duration::from_secs(30), || {
        cluster.try_index_for(key).is_some_and(|i| i != victim)
    });
    assert!(promoted.is_some(), "no replica took over within 30 s");
    let promoted = cluster.index_for(key);
    let node = &cluster.nodes()[promoted];
    assert_eq!(libraries(node).len(), 1);
    // The store finds the new master (errors until its slot map is new).
    let tenant: TenantId = "victim".parse().unwrap();
    let mut admitted = None;
    for _ in 0..200 {
        if let Ok(a) = store.admit(&tenant, &plan(10)).await {
            admitted = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(admitted.expect("admitted after the failover").allowed());
    node.cli(&["CONFIG", "RESETSTAT"]);
    let a = store.admit(&tenant, &plan(10)).await.unwrap();
    assert!(a.allowed(), "{:?}", a.decisions);
    assert_eq!(node.command_calls("fcall"), 1);
    assert_eq!(node.command_calls("function|load"), 0);
    assert_eq!(node.command_calls("evalsha"), 0);
}
