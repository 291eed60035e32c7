//! The deny cache (issue 16, item 3) against a real redis-server: a tenant
//! over its limit that keeps sending costs one Redis call per retry-after
//! period per instance, nothing is over-admitted with four instances, and
//! raising the tenant's limit in the directory lets its next request
//! through at once. Redis calls are counted by the server
//! (`INFO commandstats`, `cmdstat_evalsha` + `cmdstat_fcall`: what the store
//! sends, a script or a Redis function).
//!
//! Run with `--nocapture` for the figures (lines starting with `FIGURES`).
#![cfg(feature = "redis")]

#[path = "../examples/axum_server.rs"]
#[allow(dead_code)]
mod demo;
#[path = "common/http.rs"]
mod http_util;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use redis_server::RedisServer;
use tower_tenancy::store::{Algorithm, Check, CounterStore, DenyCache, RedisStore};
use tower_tenancy::{Catalog, TenantId};

const LIMIT: u64 = 10;
const REQUESTS: usize = 10_000;

fn rate(limit: u64) -> [Check; 1] {
    [Check::new(
        "api_calls_per_minute",
        Algorithm::SlidingLog {
            window: Duration::from_secs(60),
        },
        limit,
        1,
    )]
}

/// `n` requests of `tenant` on `store`, one after the other; the admitted.
async fn send(store: &dyn CounterStore, tenant: &TenantId, n: usize, limit: u64) -> u64 {
    let mut admitted = 0;
    for _ in 0..n {
        let a = store
            .admit(tenant, &rate(limit))
            .await
            .expect("Redis answers");
        if a.allowed() {
            admitted += 1;
        } else {
            let after = a.decisions[0]
                .retry_after
                .expect("a rate refusal says when");
            assert!(after <= Duration::from_secs(60), "{after:?}");
        }
    }
    admitted
}

async fn connect(server: &RedisServer) -> RedisStore {
    let store = RedisStore::connect(server.url()).await.unwrap();
    // Loads the script (a first EVALSHA may answer NOSCRIPT).
    store
        .admit(&"warm-up".parse().unwrap(), &rate(1_000_000))
        .await
        .unwrap();
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_cost_one_call_each_once_refused_and_admit_exactly_the_limit() {
    let server = RedisServer::new();
    let mut cached = Vec::new();
    let mut plain = Vec::new();
    for _ in 0..4 {
        cached.push(Arc::new(DenyCache::new(connect(&server).await)));
        plain.push(Arc::new(connect(&server).await));
    }

    // With the deny cache: 4 instances × 10 000 requests at once.
    let tenant: TenantId = "hammer".parse().unwrap();
    let before = server.script_calls();
    let tasks: Vec<_> = cached
        .iter()
        .map(|store| {
            let (store, tenant) = (store.clone(), tenant.clone());
            tokio::spawn(async move { send(&*store, &tenant, REQUESTS, LIMIT).await })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.unwrap();
    }
    let calls = server.script_calls() - before;
    let local: u64 = cached.iter().map(|c| c.local_refusals()).sum();

    // The peer, in the same run: the same stores without the cache.
    let peer_requests = REQUESTS / 10;
    let peer: TenantId = "hammer-plain".parse().unwrap();
    let before = server.script_calls();
    let tasks: Vec<_> = plain
        .iter()
        .map(|store| {
            let (store, tenant) = (store.clone(), peer.clone());
            tokio::spawn(async move { send(&*store, &tenant, peer_requests, LIMIT).await })
        })
        .collect();
    let mut peer_admitted = 0;
    for t in tasks {
        peer_admitted += t.await.unwrap();
    }
    let peer_calls = server.script_calls() - before;
    println!(
        "FIGURES deny cache: 4 instances × {REQUESTS} requests of a tenant limited to {LIMIT}/min \
         (sliding log): {admitted} admitted, {calls} Redis calls (EVALSHA + FCALL), {local} refused \
         locally; without the cache, 4 × {peer_requests}: {peer_admitted} admitted, \
         {peer_calls} Redis calls"
    );
    assert_eq!(admitted, LIMIT, "exactly the limit across the instances");
    assert_eq!(peer_admitted, LIMIT);
    // Each instance calls Redis for its admissions and its first refusal,
    // then refuses locally for the rest of the minute.
    assert_eq!(calls, LIMIT + 4, "Redis calls with the deny cache");
    assert_eq!(local, 4 * REQUESTS as u64 - calls);
    assert_eq!(peer_calls, 4 * peer_requests as u64);

    // A raised limit is another key: asked at once, admitted.
    let before = server.script_calls();
    assert_eq!(send(&*cached[0], &tenant, 1, LIMIT + 1).await, 1);
    assert_eq!(server.script_calls() - before, 1);
    // Invalidation drops the tenant's refusals: the store is asked again.
    cached[1].invalidate(&tenant);
    assert!(cached[1].is_empty());
    let before = server.script_calls();
    assert_eq!(send(&*cached[1], &tenant, 1, LIMIT).await, 0);
    assert_eq!(server.script_calls() - before, 1);
}

fn catalog() -> &'static str {
    r#"
[[plans]]
name = "tiny"
rates = { api_calls_per_minute = { limit = 5, window = "1m", algorithm = "sliding_log" } }
[[tenants]]
id = "acme"
plan = "tiny"
"#
}

async fn call(
    client: &http_util::HttpClient,
    method: &str,
    url: &str,
    body: &str,
) -> http_util::Reply {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("x-tenant-id", "acme")
        .header("authorization", "Bearer s3cret")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    http_util::send(client, req).await
}

/// Over HTTP with the demo (its Redis store behind the deny cache): a
/// refused tenant's requests stop reaching Redis, and an override raising
/// its limit through the admin API lets the next request through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_refuses_locally_and_a_raised_limit_applies_at_once() {
    let server = RedisServer::new();
    let dir = std::env::temp_dir().join(format!("tt-deny-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plans = dir.join("plans.toml");
    std::fs::write(&plans, catalog()).unwrap();
    let store = demo::shared_store(&server.url(), Some("closed"), Duration::from_millis(100))
        .await
        .unwrap();
    let app = demo::demo(
        &Catalog::from_toml_str(catalog()).unwrap(),
        plans.to_str().unwrap(),
        "s3cret",
        store,
    );
    let http = http_util::TestServer::start(app).await;
    let client = http_util::client();
    let me = http.url("/v1/me");
    for _ in 0..5 {
        assert_eq!(call(&client, "GET", &me, "").await.status, 200);
    }
    let refused = call(&client, "GET", &me, "").await;
    assert_eq!(refused.status, 429);
    let before = server.script_calls();
    for _ in 0..200 {
        let r = call(&client, "GET", &me, "").await;
        assert_eq!(r.status, 429);
        let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&after), "{after}");
        assert!(r.header("ratelimit").is_some());
    }
    let refused_calls = server.script_calls() - before;
    // Raise the limit with an override: the next request passes.
    let patched = call(
        &client,
        "PATCH",
        &http.url("/admin/tenants/acme"),
        r#"{"overrides": {"rates": {"api_calls_per_minute": {"limit": 50, "window": "1m", "algorithm": "sliding_log"}}}}"#,
    )
    .await;
    assert_eq!(patched.status, 200, "{:?}", patched.body);
    let before = server.script_calls();
    let next = call(&client, "GET", &me, "").await;
    let next_calls = server.script_calls() - before;
    println!(
        "FIGURES deny cache, demo over HTTP: 200 refused requests → {refused_calls} Redis calls; \
         after the override raising the limit 5 → 50: next request {} ({next_calls} Redis call)",
        next.status
    );
    assert_eq!(refused_calls, 0, "refused locally");
    assert_eq!(next.status, 200);
    assert_eq!(next_calls, 1);
    let _ = std::fs::remove_dir_all(&dir);
}
