//! Policy layers end to end over real sockets: feature gates, resource
//! limits, rate limits, quotas, concurrency (with slot release on completion,
//! drop, disconnect and panic), gauges and soft limits, with the IETF
//! RateLimit fields parsed from the wire.
//!
//! The memory store runs on a [`ManualClock`] standing at [`T0`]: time moves
//! only when a test moves it, so `r`, `t`, `Retry-After` and `used` are
//! exact, and "the request passes at exactly now + Retry-After" is checked
//! by moving the clock there (and to the millisecond before, where the
//! algorithm is exact).

#[path = "common/http.rs"]
mod http_util;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use http_util::{get as http_get, parse_policy, parse_ratelimit, send, TestServer};
use tower_tenancy::layer::limit::ResourceLimitLayer;
use tower_tenancy::resolve::HeaderResolver;
use tower_tenancy::store::{CounterStore, ManualClock, MemoryStore};
use tower_tenancy::usage::usage_report;
use tower_tenancy::{
    AdmissionLayer, Catalog, MemoryDirectory, RequireFeatureLayer, Rule, TenancyLayer, Tenant,
    TenantId,
};

const PLANS: &str = r#"
[[plans]]
name = "small"
features = ["reports"]
limits = { projects = 3, seats = 2 }
rates = { api = { limit = 5, window = "1m" }, exact = { limit = 4, window = "1m", algorithm = "sliding_log" } }
quotas = { runs = { limit = 2, period = "day" }, big = { limit = 1000, period = "month" } }
concurrency = { jobs = { limit = 2 } }

[[plans]]
name = "unlimited"
limits = { projects = "unlimited" }
rates = { api = { limit = "unlimited", window = "1m" } }

[[tenants]]
id = "acme"
plan = "small"
[[tenants]]
id = "globex"
plan = "small"
[[tenants]]
id = "initech"
plan = "unlimited"
"#;

/// 2026-12-03T10:00:30Z: 30 s into a minute, 13 h 59 min 30 s before midnight.
const T0: u64 = 1_796_292_030_000;
/// The next UTC midnight after `T0`.
const MIDNIGHT: u64 = T0 - T0 % 86_400_000 + 86_400_000;

fn setup() -> (MemoryDirectory, Arc<MemoryStore>) {
    let (dir, store, _) = setup_with_clock();
    (dir, store)
}

/// The directory, a memory store on a manual clock at `T0`, and the clock.
fn setup_with_clock() -> (MemoryDirectory, Arc<MemoryStore>, Arc<ManualClock>) {
    let catalog = Catalog::from_toml_str(PLANS).unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    (
        MemoryDirectory::from_catalog(&catalog),
        Arc::new(MemoryStore::with_clock(clock.clone())),
        clock,
    )
}

fn tenancy(dir: &MemoryDirectory) -> TenancyLayer {
    TenancyLayer::new(HeaderResolver::new("x-tenant-id"), dir.clone())
}

async fn post_as(client: &http_util::HttpClient, url: &str, tenant: &str) -> http_util::Reply {
    let req = Request::post(url)
        .header("x-tenant-id", tenant)
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(client, req).await
}

async fn used(store: &MemoryStore, dir: &MemoryDirectory, tenant: &str, policy: &str) -> u64 {
    let tenant = dir.get(&tenant.parse().unwrap()).unwrap();
    let report = usage_report(store, &tenant).await.unwrap();
    report
        .policies
        .iter()
        .find(|p| p.policy == policy)
        .unwrap_or_else(|| panic!("no policy {policy}"))
        .used
}

#[tokio::test]
async fn rate_limit_fields_and_429() {
    let (dir, store, clock) = setup_with_clock();
    let app = Router::new()
        .route("/api", get(|| async { "ok" }))
        .route_layer(AdmissionLayer::new(store.clone()).rule(Rule::rate("api")))
        .route(
            "/exact",
            get(|| async { "ok" })
                .route_layer(AdmissionLayer::new(store.clone()).rule(Rule::rate("exact"))),
        )
        .layer(tenancy(&dir));
    let server = TestServer::start(app).await;
    let client = http_util::client();
    let acme = [("x-tenant-id", "acme")];

    for expected_remaining in (0..5).rev() {
        let r = http_get(&client, &server.url("/api"), &acme).await;
        assert_eq!(r.status, 200);
        let (name, q, w) = parse_policy(r.header("ratelimit-policy").unwrap());
        assert_eq!((name.as_str(), q, w), ("api", 5, Some(60)));
        let (name, remaining, reset) = parse_ratelimit(r.header("ratelimit").unwrap());
        assert_eq!(name, "api");
        assert_eq!(remaining, expected_remaining);
        // The sub-bucket window counts a unit until its 7.5 s bucket has
        // left the window: up to W + W/8 = 67.5 s, 68 rounded up.
        assert!((1..=68).contains(&reset), "reset {reset}");
        assert!(r.header("retry-after").is_none());
    }
    let r = http_get(&client, &server.url("/api"), &acme).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=68).contains(&retry), "retry-after {retry}");
    let body = r.json();
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(body["policy"], "api");
    assert_eq!(body["limit"], 5);
    assert_eq!(body["usage"], 5);
    assert_eq!(body["tenant"], "acme");
    assert_eq!(body["retry_after"], retry);
    assert_eq!(parse_ratelimit(r.header("ratelimit").unwrap()).1, 0);
    assert_eq!(
        used(&store, &dir, "acme", "api").await,
        5,
        "the 429 took nothing"
    );
    // The request passes at exactly now + Retry-After.
    clock.advance_ms(retry * 1000);
    let r = http_get(&client, &server.url("/api"), &acme).await;
    assert_eq!(r.status, 200, "at now + Retry-After ({retry} s)");

    // The sliding log is exact: 4 requests at one instant, the 5th waits
    // exactly one window (60 s); refused 1 ms before, admitted at 60 s.
    let exact_url = server.url("/exact");
    let exact = || http_get(&client, &exact_url, &acme);
    for expected_remaining in (0..4).rev() {
        let r = exact().await;
        assert_eq!(r.status, 200);
        let (_, remaining, reset) = parse_ratelimit(r.header("ratelimit").unwrap());
        assert_eq!((remaining, reset), (expected_remaining, 60));
    }
    let r = exact().await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("60"));
    clock.advance_ms(60_000 - 1);
    let r = exact().await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"), "1 ms left, rounded up");
    clock.advance_ms(1);
    let r = exact().await;
    assert_eq!(r.status, 200, "at exactly now + Retry-After");
    // The four entries left the window together: 3 remain after this one.
    assert_eq!(parse_ratelimit(r.header("ratelimit").unwrap()).1, 3);

    // Another tenant has its own counter; an unlimited plan is not counted.
    assert_eq!(
        http_get(&client, &server.url("/api"), &[("x-tenant-id", "globex")])
            .await
            .status,
        200
    );
    for _ in 0..20 {
        let r = http_get(&client, &server.url("/api"), &[("x-tenant-id", "initech")]).await;
        assert_eq!(r.status, 200);
        assert!(r.header("ratelimit").is_none());
    }
}

#[tokio::test]
async fn quota_skip_rules_cost_and_all_or_nothing() {
    let (dir, store, clock) = setup_with_clock();
    let runs = AdmissionLayer::new(store.clone())
        .rule(Rule::rate("api"))
        .rule(Rule::quota("runs").skip_methods([Method::GET]));
    let batch = AdmissionLayer::new(store.clone()).rule(Rule::quota("big").cost(|head| {
        head.headers
            .get("x-batch")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(1)
    }));
    let app = Router::new()
        .route(
            "/runs",
            get(|| async { "list" })
                .post(|| async { "started" })
                .route_layer(runs),
        )
        .route("/batch", post(|| async { "ok" }).route_layer(batch))
        .layer(tenancy(&dir));
    let server = TestServer::start(app).await;
    let client = http_util::client();
    let url = server.url("/runs");

    // Reads skip the quota but count against the rate limit.
    assert_eq!(
        http_get(&client, &url, &[("x-tenant-id", "acme")])
            .await
            .status,
        200
    );
    assert_eq!(used(&store, &dir, "acme", "runs").await, 0);
    assert_eq!(used(&store, &dir, "acme", "api").await, 1);

    assert_eq!(post_as(&client, &url, "acme").await.status, 200);
    let r = post_as(&client, &url, "acme").await;
    assert_eq!(r.status, 200);
    // Both policies are in the fields (draft-11), the quota with 0 left.
    let fields = r.header("ratelimit").unwrap();
    assert!(
        fields.starts_with("\"api\";r=") && fields.contains(", \"runs\";r=0;t="),
        "{fields}"
    );
    let r = post_as(&client, &url, "acme").await;
    assert_eq!(r.status, 429);
    let body = r.json();
    assert_eq!(body["code"], "quota_exceeded");
    assert_eq!(
        (body["limit"].as_u64(), body["usage"].as_u64()),
        (Some(2), Some(2))
    );
    // Retry-After points at the next UTC midnight, exactly.
    assert_eq!(
        r.header("retry-after"),
        Some((MIDNIGHT - T0).div_ceil(1000).to_string().as_str())
    );
    assert_eq!(body["retry_after"], (MIDNIGHT - T0) / 1000);
    // All or nothing: the refused POST consumed no rate-limit unit.
    assert_eq!(used(&store, &dir, "acme", "api").await, 3);
    assert_eq!(used(&store, &dir, "acme", "runs").await, 2);

    // Cost per request.
    let req = |n: &str| {
        Request::post(server.url("/batch"))
            .header("x-tenant-id", "acme")
            .header("x-batch", n)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(send(&client, req("600")).await.status, 200);
    assert_eq!(send(&client, req("401")).await.status, 429);
    assert_eq!(send(&client, req("400")).await.status, 200);
    assert_eq!(used(&store, &dir, "acme", "big").await, 1000);
    // A cost above the limit can never pass: 429 without Retry-After.
    let r = send(&client, req("5000")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["code"], "quota_exceeded");
    assert_eq!(r.header("retry-after"), None, "no wait makes it pass");
    assert_eq!(used(&store, &dir, "acme", "big").await, 1000);

    // The day's quota: still refused 1 ms before midnight, open at midnight.
    clock.set_ms(MIDNIGHT - 1);
    let r = post_as(&client, &url, "acme").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    clock.set_ms(MIDNIGHT);
    let r = post_as(&client, &url, "acme").await;
    assert_eq!(r.status, 200, "a new day");
    assert_eq!(used(&store, &dir, "acme", "runs").await, 1);
}

#[tokio::test]
async fn feature_gate_and_resource_limit() {
    let (dir, _) = setup();
    let projects = Arc::new(AtomicU64::new(0));
    let asked = Arc::new(AtomicU64::new(0));
    let (count, asks) = (projects.clone(), asked.clone());
    let limit = ResourceLimitLayer::new("projects", move |_: Arc<Tenant>, _: Arc<str>| {
        asks.fetch_add(1, Ordering::SeqCst);
        let n = count.load(Ordering::SeqCst);
        async move { Ok::<_, Infallible>(n) }
    });
    let created = projects.clone();
    let app = Router::new()
        .route(
            "/reports",
            get(|| async { "report" }).route_layer(RequireFeatureLayer::new("reports")),
        )
        .route(
            "/sso",
            get(|| async { "sso" }).route_layer(RequireFeatureLayer::new("sso")),
        )
        .route(
            "/projects",
            post(move || {
                created.fetch_add(1, Ordering::SeqCst);
                async { StatusCode::CREATED }
            })
            .route_layer(limit),
        )
        .layer(tenancy(&dir));
    let server = TestServer::start(app).await;
    let client = http_util::client();

    assert_eq!(
        http_get(&client, &server.url("/reports"), &[("x-tenant-id", "acme")])
            .await
            .status,
        200
    );
    let r = http_get(&client, &server.url("/sso"), &[("x-tenant-id", "acme")]).await;
    assert_eq!(r.status, 403);
    let body = r.json();
    assert_eq!(
        (
            body["code"].as_str(),
            body["feature"].as_str(),
            body["plan"].as_str()
        ),
        (Some("feature_not_in_plan"), Some("sso"), Some("small"))
    );

    for _ in 0..3 {
        assert_eq!(
            post_as(&client, &server.url("/projects"), "acme")
                .await
                .status,
            201
        );
    }
    let r = post_as(&client, &server.url("/projects"), "acme").await;
    assert_eq!(r.status, 403);
    let body = r.json();
    assert_eq!(body["code"], "resource_limit_reached");
    assert_eq!(
        (body["limit"].as_u64(), body["usage"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(asked.load(Ordering::SeqCst), 4, "asked once per request");
    // Unlimited: the usage source is not even asked.
    for _ in 0..5 {
        assert_eq!(
            post_as(&client, &server.url("/projects"), "initech")
                .await
                .status,
            201
        );
    }
    assert_eq!(asked.load(Ordering::SeqCst), 4, "unlimited: not asked");
    assert_eq!(projects.load(Ordering::SeqCst), 8, "the handler ran");
}

#[tokio::test]
async fn gauge_reserves_atomically_and_gives_back_on_failure() {
    let (dir, store) = setup();
    let app = Router::new()
        .route(
            "/seats",
            post(|req: Request<Body>| async move {
                if req.headers().contains_key("x-fail") {
                    StatusCode::UNPROCESSABLE_ENTITY
                } else {
                    StatusCode::CREATED
                }
            })
            .route_layer(AdmissionLayer::new(store.clone()).rule(Rule::gauge("seats"))),
        )
        .layer(tenancy(&dir));
    let server = TestServer::start(app).await;
    let client = http_util::client();
    let failing = Request::post(server.url("/seats"))
        .header("x-tenant-id", "acme")
        .header("x-fail", "1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&client, failing).await.status, 422);
    assert_eq!(
        used(&store, &dir, "acme", "seats").await,
        0,
        "failed create gave the seat back"
    );

    // 20 concurrent creates against a limit of 2: exactly 2 succeed.
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (client, url) = (client.clone(), server.url("/seats"));
            tokio::spawn(async move { post_as(&client, &url, "acme").await.status })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap().as_u16() {
            201 => created += 1,
            403 => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(created, 2);
    // The application deletes one: the next create passes.
    store
        .adjust(&"acme".parse().unwrap(), "seats", -1)
        .await
        .unwrap();
    assert_eq!(
        post_as(&client, &server.url("/seats"), "acme").await.status,
        201
    );
}

/// Where `hold` handlers wait: counted in `held`, released when `open` is true.
#[derive(Clone)]
struct Gate {
    open: Arc<tokio::sync::watch::Sender<bool>>,
    held: Arc<AtomicUsize>,
}

impl Gate {
    fn closed() -> Self {
        Self {
            open: Arc::new(tokio::sync::watch::channel(false).0),
            held: Arc::default(),
        }
    }

    /// Polls (up to 10 s) until `n` handlers wait at the gate.
    async fn until_held(&self, n: usize) {
        for _ in 0..500 {
            if self.held.load(Ordering::SeqCst) == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "{} handlers held, expected {n}",
            self.held.load(Ordering::SeqCst)
        );
    }
}

/// A handler whose behaviour is chosen by the request: finish, stream
/// forever, wait at the gate (`hold`), or panic.
async fn job(gate: Gate, req: Request<Body>) -> axum::response::Response {
    match req.headers().get("x-mode").and_then(|v| v.to_str().ok()) {
        Some("panic") => panic!("handler panicked (on purpose)"),
        Some("stream") => {
            let stream = futures_stream();
            axum::response::Response::new(Body::from_stream(stream))
        }
        Some("hold") => {
            gate.held.fetch_add(1, Ordering::SeqCst);
            let _ = gate.open.subscribe().wait_for(|open| *open).await;
            gate.held.fetch_sub(1, Ordering::SeqCst);
            axum::response::Response::new(Body::from("done"))
        }
        _ => axum::response::Response::new(Body::from("done")),
    }
}

/// An endless body: one chunk every 10 ms.
fn futures_stream() -> impl tokio_stream::Stream<Item = Result<Bytes, Infallible>> + Send {
    use tokio_stream::StreamExt;
    tokio_stream::iter(0u64..)
        .throttle(Duration::from_millis(10))
        .map(|i| Ok(Bytes::from(format!("{i}\n"))))
}

/// Polls (up to 10 s) until no slot is used; the slots used at the end.
async fn wait_for_zero(store: &MemoryStore, dir: &MemoryDirectory, tenant: &str) -> u64 {
    for _ in 0..500 {
        let n = used(store, dir, tenant, "jobs").await;
        if n == 0 {
            return 0;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    used(store, dir, tenant, "jobs").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_slots_are_released_on_completion_drop_disconnect_and_panic() {
    let (dir, store) = setup();
    let gate = Gate::closed();
    let handler_gate = gate.clone();
    let app = Router::new()
        .route(
            "/jobs",
            post(move |req| job(handler_gate.clone(), req))
                .route_layer(AdmissionLayer::new(store.clone()).rule(Rule::concurrency("jobs"))),
        )
        .layer(tenancy(&dir));
    let server = TestServer::start(app).await;
    let client = http_util::client();
    let req = |mode: &str| {
        Request::post(server.url("/jobs"))
            .header("x-tenant-id", "acme")
            .header("x-mode", mode)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };

    // Two jobs held at the gate hold both slots; a third is refused.
    let a = tokio::spawn(send_owned(client.clone(), req("hold")));
    let b = tokio::spawn(send_owned(client.clone(), req("hold")));
    gate.until_held(2).await;
    let r = send(&client, req("fast")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["code"], "concurrency_limited");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(used(&store, &dir, "acme", "jobs").await, 2);
    gate.open.send_replace(true);
    assert_eq!(a.await.unwrap().status, 200);
    assert_eq!(b.await.unwrap().status, 200);
    assert_eq!(wait_for_zero(&store, &dir, "acme").await, 0);
    gate.open.send_replace(false);

    // An open streaming body holds its slot; dropping the response (client
    // disconnect) frees it.
    let streaming = client.request(req("stream")).await.unwrap();
    assert_eq!(streaming.status(), 200);
    assert_eq!(used(&store, &dir, "acme", "jobs").await, 1);
    drop(streaming);
    assert_eq!(wait_for_zero(&store, &dir, "acme").await, 0);

    // Thousands of requests mixing every ending; nothing leaks.
    silence_deliberate_panics();
    let completed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..2000u32 {
        let client = client.clone();
        let mode = match i % 4 {
            0 => "fast",
            1 => "stream",
            2 => "panic",
            _ => "hold",
        };
        let request = req(mode);
        let completed = completed.clone();
        tasks.push(tokio::spawn(async move {
            // Held handlers never answer (the gate stays closed): the
            // client gives up after 20 ms, admitted or not yet.
            let patience = if mode == "hold" {
                Duration::from_millis(20)
            } else {
                Duration::from_secs(30)
            };
            let answered = tokio::time::timeout(patience, client.request(request)).await;
            if let Ok(Ok(resp)) = answered {
                completed.fetch_add(1, Ordering::Relaxed);
                // Streams are dropped unread: the client disconnects.
                drop(resp);
            }
        }));
        if tasks.len() >= 32 {
            for t in tasks.drain(..) {
                t.await.unwrap();
            }
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Every fast and stream request is answered (200, or 429 while the
    // slots are taken); admitted panics close the connection.
    assert!(
        completed.load(Ordering::Relaxed) >= 1000,
        "{} answered",
        completed.load(Ordering::Relaxed)
    );
    assert_eq!(
        wait_for_zero(&store, &dir, "acme").await,
        0,
        "leaked concurrency slots"
    );
    // And the slots are usable again.
    assert_eq!(send(&client, req("fast")).await.status, 200);
}

fn silence_deliberate_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .unwrap_or_default();
        if !msg.contains("on purpose") {
            default(info);
        }
    }));
}

async fn send_owned(client: http_util::HttpClient, req: Request<Full<Bytes>>) -> http_util::Reply {
    send(&client, req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_limit_fires_once_per_period_under_concurrent_load() {
    let (dir, store) = setup();
    let fired = Arc::new(AtomicUsize::new(0));
    let seen = fired.clone();
    let layer = AdmissionLayer::new(store.clone())
        .rule(Rule::quota("big"))
        .soft_limit(80, move |event| {
            assert_eq!(event.policy, "big");
            assert!(
                event.used >= 800,
                "fired below the threshold: {}",
                event.used
            );
            seen.fetch_add(1, Ordering::SeqCst);
        })
        .soft_limit_header(true);
    let app = Router::new()
        .route("/x", get(|| async { "ok" }).route_layer(layer))
        .layer(tenancy(&dir));
    let server = TestServer::start(app).await;
    let client = http_util::client();
    let warnings = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (client, url, warnings) = (client.clone(), server.url("/x"), warnings.clone());
            tokio::spawn(async move {
                for _ in 0..60 {
                    let r = http_get(&client, &url, &[("x-tenant-id", "globex")]).await;
                    assert_eq!(r.status, 200);
                    if let Some(w) = r.header("x-ratelimit-warning") {
                        assert!(w.starts_with("\"big\";u="), "{w}");
                        warnings.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(used(&store, &dir, "globex", "big").await, 960);
    assert_eq!(
        fired.load(Ordering::SeqCst),
        1,
        "the hook fires exactly once per period"
    );
    // Requests 800..=960 carry the warning header.
    assert_eq!(warnings.load(Ordering::SeqCst), 161);
}

#[tokio::test]
async fn plan_change_applies_to_the_next_request_and_keeps_counters() {
    let (dir, store) = setup();
    let app = Router::new()
        .route("/api", get(|| async { "ok" }))
        .route_layer(AdmissionLayer::new(store.clone()).rule(Rule::rate("exact")))
        .layer(tenancy(&dir));
    let server = TestServer::start(app).await;
    let client = http_util::client();
    let acme = [("x-tenant-id", "acme")];
    for _ in 0..4 {
        assert_eq!(
            http_get(&client, &server.url("/api"), &acme).await.status,
            200
        );
    }
    assert_eq!(
        http_get(&client, &server.url("/api"), &acme).await.status,
        429
    );
    // A temporary boost: the limit rises to 6 and the 4 used units are kept.
    let id: TenantId = "acme".parse().unwrap();
    dir.update(&id, |t| {
        let mut o = t.overrides().clone();
        o.rates.insert(
            "exact".into(),
            tower_tenancy::RateRule::new(6, Duration::from_secs(60))
                .algorithm(tower_tenancy::RateAlgorithm::SlidingLog),
        );
        t.set_overrides(o)
    });
    for _ in 0..2 {
        assert_eq!(
            http_get(&client, &server.url("/api"), &acme).await.status,
            200
        );
    }
    let r = http_get(&client, &server.url("/api"), &acme).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["limit"], 6);
    assert_eq!(used(&store, &dir, "acme", "exact").await, 6);
}
