//! Shadow mode over real sockets, on the memory store, a real Redis and a
//! real Redis Cluster: the same requests go to an enforcing tenant and to a
//! shadowed one; the shadowed one is never refused, each of its would-be
//! refusals is named in `x-tenancy-shadow-rejected` exactly where the
//! enforcing run refused, and both end with equal counters. Then rules
//! shadowed one by one in the catalog (next to enforced ones) and a tenant
//! shadowed by an override, and the `tenancy_shadow_rejected_total` metric.

#[path = "common/http.rs"]
mod http_util;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use http_util::{send, HttpClient, Reply, TestServer};
use redis_server::{RedisCluster, RedisServer};
use tokio::sync::mpsc;
use tower_tenancy::resolve::HeaderResolver;
use tower_tenancy::store::{Algorithm, Check, CounterStore, DenyCache, ManualClock, MemoryStore};
use tower_tenancy::usage::usage_report;
use tower_tenancy::{AdmissionLayer, Catalog, MemoryDirectory, RedisStore, Rule, TenancyLayer};

const PLANS: &str = r#"
[[plans]]
name = "small"
rates = { api = { limit = 4, window = "1m" } }
quotas = { runs = { limit = 3, period = "day" } }
concurrency = { jobs = { limit = 2 } }

# New limits under observation next to enforced ones.
[[plans]]
name = "trial"
rates = { api = { limit = 100, window = "1m" }, burst = { limit = 2, window = "1m", shadow = true } }
quotas = { runs = { limit = 1, period = "day", shadow = true } }
concurrency = { jobs = { limit = 1, shadow = true } }

[[tenants]]
id = "enforced"
plan = "small"
[[tenants]]
id = "shadowed"
plan = "small"
[[tenants]]
id = "trial"
plan = "trial"
[[tenants]]
id = "watched"
plan = "small"
overrides = { shadow = true }
"#;

/// Open response bodies, closed when the test says so.
type Holds = Arc<Mutex<Vec<mpsc::Sender<Result<Bytes, Infallible>>>>>;

/// `POST /run`: rate `api` (cost from `x-cost`), quota `runs`, concurrency
/// `jobs`; with `x-hold` the response body stays open (holding the slot)
/// until the test releases it.
fn app(
    directory: &MemoryDirectory,
    admission: AdmissionLayer<Arc<dyn CounterStore>>,
) -> (Router, Holds) {
    let holds = Holds::default();
    let h = holds.clone();
    let admission = admission
        .rule(Rule::rate("api").cost(|head| {
            head.headers
                .get("x-cost")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(1)
        }))
        .rule(Rule::rate("burst"))
        .rule(Rule::quota("runs"))
        .rule(Rule::concurrency("jobs"));
    let router = Router::new()
        .route(
            "/run",
            post(move |req: Request<Body>| {
                let holds = h.clone();
                async move {
                    if req.headers().contains_key("x-hold") {
                        let (tx, rx) = mpsc::channel(1);
                        holds.lock().unwrap().push(tx);
                        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                    } else {
                        Body::from("ran")
                    }
                }
            }),
        )
        .layer(admission)
        .layer(TenancyLayer::new(
            HeaderResolver::new("x-tenant-id"),
            directory.clone(),
        ));
    (router, holds)
}

/// One request of the scenario: its cost and whether it holds its slot.
#[derive(Clone, Copy)]
enum Step {
    Run { cost: u64, hold: bool },
    Release,
}

const SCENARIO: &[Step] = &[
    Step::Run {
        cost: 1,
        hold: true,
    },
    Step::Run {
        cost: 1,
        hold: true,
    },
    // Concurrency: 2 of 2 in flight.
    Step::Run {
        cost: 1,
        hold: true,
    },
    Step::Release,
    Step::Run {
        cost: 1,
        hold: false,
    },
    // Quota: 3 of 3 runs today.
    Step::Run {
        cost: 1,
        hold: false,
    },
    // Rate (3 + 2 > 4) and quota.
    Step::Run {
        cost: 2,
        hold: false,
    },
];

struct Outcome {
    status: u16,
    /// Enforcing run: `violated-policies`; shadow run: `x-tenancy-shadow-rejected`.
    refused_by: BTreeSet<String>,
}

async fn post_run(
    client: &HttpClient,
    server: &TestServer,
    tenant: &str,
    cost: u64,
    hold: bool,
) -> Reply {
    let mut req = Request::post(server.url("/run"))
        .header("x-tenant-id", tenant)
        .header("x-cost", cost.to_string());
    if hold {
        req = req.header("x-hold", "1");
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    if hold {
        // Headers only: the body stays open.
        let resp = client.request(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = if status == 200 {
            tokio::spawn(
                async move { drop(http_body_util::BodyExt::collect(resp.into_body()).await) },
            );
            Bytes::new()
        } else {
            http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes()
        };
        Reply {
            status,
            headers,
            body,
        }
    } else {
        send(client, req).await
    }
}

/// Units in use of every counter of `tenant`, by policy.
async fn levels(
    store: &dyn CounterStore,
    dir: &MemoryDirectory,
    tenant: &str,
) -> Vec<(String, u64)> {
    let tenant = dir.get(&tenant.parse().unwrap()).unwrap();
    let report = usage_report(store, &tenant).await.unwrap();
    report
        .policies
        .into_iter()
        .map(|p| (p.policy, p.used))
        .collect()
}

async fn wait_for_jobs(store: &dyn CounterStore, dir: &MemoryDirectory, tenant: &str, n: u64) {
    for _ in 0..500 {
        let jobs = levels(store, dir, tenant)
            .await
            .into_iter()
            .find(|(p, _)| p == "jobs")
            .unwrap()
            .1;
        if jobs == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{tenant}: jobs never reached {n}");
}

async fn play(
    store: &Arc<dyn CounterStore>,
    dir: &MemoryDirectory,
    shadow: bool,
) -> (Vec<Outcome>, Vec<(String, u64)>) {
    let tenant = if shadow { "shadowed" } else { "enforced" };
    let mut admission = AdmissionLayer::new(store.clone());
    if shadow {
        admission = admission.shadow(true).shadow_header(true);
    }
    let (router, holds) = app(dir, admission);
    let server = TestServer::start(router).await;
    let client = http_util::client();
    let mut outcomes = Vec::new();
    for step in SCENARIO {
        match *step {
            Step::Release => {
                holds.lock().unwrap().clear();
                wait_for_jobs(&**store, dir, tenant, 0).await;
            }
            Step::Run { cost, hold } => {
                let r = post_run(&client, &server, tenant, cost, hold).await;
                let refused_by = if shadow {
                    assert!(r
                        .headers
                        .get("x-tenancy-shadow-rejected")
                        .is_none_or(|_| r.status == 200));
                    r.header("x-tenancy-shadow-rejected")
                        .map(|v| v.split(", ").map(String::from).collect())
                        .unwrap_or_default()
                } else if r.status == 429 {
                    r.json()["violated-policies"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| p.as_str().unwrap().to_owned())
                        .collect()
                } else {
                    BTreeSet::new()
                };
                if shadow {
                    // Shadowed rules are left out of the RateLimit fields.
                    assert!(r.header("ratelimit").is_none(), "{:?}", r.headers);
                }
                outcomes.push(Outcome {
                    status: r.status.as_u16(),
                    refused_by,
                });
            }
        }
    }
    // Every slot is given back once the last bodies have ended.
    wait_for_jobs(&**store, dir, tenant, 0).await;
    let counters = levels(&**store, dir, tenant).await;
    (outcomes, counters)
}

/// The scenario enforced and shadowed on `store`: same counters, nothing
/// refused in shadow, the same refusals named.
async fn same_counters_nothing_refused(store: Arc<dyn CounterStore>) {
    let dir = MemoryDirectory::from_catalog(&Catalog::from_toml_str(PLANS).unwrap());
    let (enforced, enforced_counters) = play(&store, &dir, false).await;
    let (shadowed, shadowed_counters) = play(&store, &dir, true).await;
    let statuses: Vec<u16> = enforced.iter().map(|o| o.status).collect();
    assert_eq!(
        statuses,
        [200, 200, 429, 200, 429, 429],
        "the enforcing run refuses"
    );
    let names = |o: &[Outcome]| o.iter().map(|o| o.refused_by.clone()).collect::<Vec<_>>();
    let set = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        names(&enforced),
        [
            set(&[]),
            set(&[]),
            set(&["jobs"]),
            set(&[]),
            set(&["runs"]),
            set(&["api", "runs"])
        ]
    );
    assert!(
        shadowed.iter().all(|o| o.status == 200),
        "shadow mode refuses nothing"
    );
    assert_eq!(
        names(&shadowed),
        names(&enforced),
        "the same would-be refusals"
    );
    assert_eq!(shadowed_counters, enforced_counters, "the same counters");
    assert_eq!(
        enforced_counters,
        [
            ("api".to_owned(), 3),
            ("runs".to_owned(), 3),
            ("jobs".to_owned(), 0)
        ]
    );
}

/// Rules shadowed in the catalog next to an enforced one, and a tenant
/// shadowed by an override.
async fn per_rule_and_per_tenant(store: Arc<dyn CounterStore>) {
    let dir = MemoryDirectory::from_catalog(&Catalog::from_toml_str(PLANS).unwrap());
    let (router, holds) = app(&dir, AdmissionLayer::new(store.clone()).shadow_header(true));
    let server = TestServer::start(router).await;
    let client = http_util::client();
    // trial: api 100 enforced; burst 2, runs 1 and jobs 1 shadowed.
    let mut seen = Vec::new();
    for hold in [true, true, false] {
        let r = post_run(&client, &server, "trial", 1, hold).await;
        assert_eq!(r.status, 200);
        seen.push(r.header("x-tenancy-shadow-rejected").map(String::from));
    }
    assert_eq!(
        seen,
        [
            None,
            Some("runs, jobs".to_owned()),
            Some("runs, jobs".to_owned())
        ]
    );
    // The enforced rule counted every request; the shadowed ones only the
    // first (the others would have been refused: nothing consumed).
    assert_eq!(
        levels(&*store, &dir, "trial").await,
        [
            ("api".to_owned(), 3),
            ("burst".to_owned(), 1),
            ("runs".to_owned(), 1),
            ("jobs".to_owned(), 1)
        ]
    );
    holds.lock().unwrap().clear();
    wait_for_jobs(&*store, &dir, "trial", 0).await;

    // watched: the plan "small" enforced elsewhere, shadowed for this tenant.
    for cost in [1, 1, 1, 1, 3] {
        let r = post_run(&client, &server, "watched", cost, false).await;
        assert_eq!(r.status, 200);
    }
    let r = post_run(&client, &server, "watched", 1, false).await;
    assert_eq!(r.header("x-tenancy-shadow-rejected"), Some("runs"));
    wait_for_jobs(&*store, &dir, "watched", 0).await;
    assert_eq!(
        levels(&*store, &dir, "watched").await,
        [
            ("api".to_owned(), 3),
            ("runs".to_owned(), 3),
            ("jobs".to_owned(), 0)
        ]
    );
}

fn memory() -> Arc<dyn CounterStore> {
    let clock = Arc::new(ManualClock::new(1_780_000_000_000));
    Arc::new(MemoryStore::builder().clock(clock).build())
}

fn on_clock(store: RedisStore) -> Arc<dyn CounterStore> {
    // A fixed test clock: the windows do not slide between the two runs.
    Arc::new(store.clock(Arc::new(ManualClock::new(1_780_000_000_000))))
}

#[tokio::test]
async fn memory_store() {
    same_counters_nothing_refused(memory()).await;
    per_rule_and_per_tenant(memory()).await;
}

#[tokio::test]
async fn redis() {
    let server = RedisServer::new();
    let store = RedisStore::connect(server.url()).await.unwrap();
    same_counters_nothing_refused(on_clock(store.clone())).await;
    per_rule_and_per_tenant(on_clock(store.prefix("t2:"))).await;
}

#[tokio::test]
async fn redis_cluster() {
    let cluster = RedisCluster::new();
    let store = RedisStore::connect_cluster(cluster.urls()).await.unwrap();
    same_counters_nothing_refused(on_clock(store.clone())).await;
    per_rule_and_per_tenant(on_clock(store.prefix("t2:"))).await;
}

#[cfg(feature = "metrics")]
#[tokio::test]
async fn shadow_rejections_are_counted() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    tower_tenancy::observe::label_tenants(true);
    let store = memory();
    let dir = MemoryDirectory::from_catalog(&Catalog::from_toml_str(PLANS).unwrap());
    let (router, _holds) = app(&dir, AdmissionLayer::new(store).shadow(true));
    let server = TestServer::start(router).await;
    let client = http_util::client();
    for _ in 0..5 {
        let r = post_run(&client, &server, "enforced", 1, false).await;
        assert_eq!(r.status, 200);
        assert!(
            r.header("x-tenancy-shadow-rejected").is_none(),
            "header off by default"
        );
    }
    let counters: Vec<(String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let (_, key) = key.into_parts();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            match value {
                DebugValue::Counter(n)
                    if key.name() == "tenancy_shadow_rejected_total"
                        && labels.contains(&"tenant=enforced".to_owned()) =>
                {
                    Some((labels.join(","), n))
                }
                _ => None,
            }
        })
        .collect();
    // Runs 4 and 5 exceed the quota of 3 (the rate allows 4: run 5 is the
    // first beyond it, but a refused run 4 consumed nothing).
    assert_eq!(
        counters,
        [(
            "code=quota_exceeded,policy=runs,tenant=enforced".to_owned(),
            2
        )]
    );
}

/// A deny cache in front of the store keeps no shadowed refusal: the next
/// request still reaches the store, and its enforced checks count.
#[tokio::test]
async fn a_deny_cache_keeps_no_shadowed_refusal() {
    let store = DenyCache::new(MemoryStore::new());
    let acme = "acme".parse().unwrap();
    let minute = Algorithm::SlidingLog {
        window: Duration::from_secs(60),
    };
    let checks = [
        Check::new("api", minute, 100, 1),
        Check::new("new_limit", minute, 1, 1).shadowed(),
    ];
    for n in 1..=5u64 {
        let a = store.admit(&acme, &checks).await.unwrap();
        assert!(a.admits(&checks), "request {n} admitted");
        assert_eq!(
            a.decisions[0].used, n,
            "request {n} counted by the enforced check"
        );
        assert_eq!(a.decisions[1].allowed, n == 1);
    }
}
