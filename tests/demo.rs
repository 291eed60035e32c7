//! The demo (examples/axum_server.rs) over a real socket: the admin API
//! (auth, bad input, plan/status/override changes, catalog reload) and the
//! usage report, on the memory store and on a real Redis.

#[path = "../examples/axum_server.rs"]
#[allow(dead_code)]
mod example;
#[path = "common/http.rs"]
mod http_util;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use http_util::{get as http_get, parse_ratelimit, send, HttpClient, Reply, TestServer};
use serde_json::{json, Value};
use tower_tenancy::store::{CounterStore, ManualClock, MemoryStore};
use tower_tenancy::{Catalog, RedisStore};

const ADMIN: (&str, &str) = ("authorization", "Bearer s3cret");

struct Demo {
    server: TestServer,
    client: HttpClient,
    plans: std::path::PathBuf,
    _dir: TempDir,
}

/// A directory removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start(store: Arc<dyn CounterStore>) -> Demo {
    let dir =
        std::env::temp_dir().join(format!("tt-demo-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let plans = dir.join("plans.toml");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/plans.toml"),
        &plans,
    )
    .unwrap();
    let catalog = Catalog::from_path(&plans).unwrap();
    let app = example::demo(&catalog, plans.to_str().unwrap(), "s3cret", store);
    Demo {
        server: TestServer::start(app).await,
        client: http_util::client(),
        plans,
        _dir: TempDir(dir),
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

impl Demo {
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        http_get(&self.client, &self.server.url(path), headers).await
    }

    async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut req = Request::builder().method(method).uri(self.server.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        send(
            &self.client,
            req.body(Full::new(Bytes::from(body.to_owned()))).unwrap(),
        )
        .await
    }

    /// `POST /v1/workflows` named `w{i}` as `tenant`.
    async fn create_workflow(&self, tenant: &str, i: usize) -> Reply {
        let h = [
            ("x-tenant-id", tenant),
            ("content-type", "application/json"),
        ];
        let body = format!("{{\"name\":\"w{i}\"}}");
        self.call("POST", "/v1/workflows", &h, &body).await
    }

    async fn admin_patch(&self, tenant: &str, body: Value) -> Reply {
        self.call(
            "PATCH",
            &format!("/admin/tenants/{tenant}"),
            &[ADMIN],
            &body.to_string(),
        )
        .await
    }

    async fn usage(&self, tenant: &str) -> Value {
        let r = self
            .get(&format!("/admin/tenants/{tenant}/usage"), &[ADMIN])
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.json()
    }
}

fn policy<'a>(usage: &'a Value, name: &str) -> &'a Value {
    usage["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["policy"] == name)
        .unwrap_or_else(|| panic!("no {name} in {usage}"))
}

#[tokio::test]
async fn admin_rejects_missing_and_wrong_tokens_and_bad_input() {
    let demo = start(Arc::new(MemoryStore::new())).await;
    let expect = |r: &Reply, status: u16, code: &str| {
        assert_eq!(
            r.status.as_u16(),
            status,
            "{:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert_eq!(r.json()["code"], code);
    };
    for path in [
        "/admin/tenants",
        "/admin/tenants/acme",
        "/admin/tenants/acme/usage",
    ] {
        expect(&demo.get(path, &[]).await, 401, "unauthorized");
        expect(
            &demo.get(path, &[("authorization", "Bearer wrong")]).await,
            403,
            "forbidden",
        );
        expect(
            &demo
                .get(path, &[("authorization", "Bearer s3cret-but-longer")])
                .await,
            403,
            "forbidden",
        );
        expect(
            &demo.get(path, &[("authorization", "s3cret")]).await,
            401,
            "unauthorized",
        );
    }
    expect(
        &demo.call("POST", "/admin/reload", &[], "").await,
        401,
        "unauthorized",
    );
    expect(
        &demo.call("PATCH", "/admin/tenants/acme", &[], "{}").await,
        401,
        "unauthorized",
    );

    // Malformed bodies name what is wrong; nothing changes.
    let r = demo
        .call("PATCH", "/admin/tenants/acme", &[ADMIN], "{not json")
        .await;
    expect(&r, 400, "malformed_body");
    let r = demo
        .admin_patch("acme", json!({"status": "sleeping"}))
        .await;
    expect(&r, 400, "malformed_body");
    assert!(
        r.json()["detail"].as_str().unwrap().starts_with("status"),
        "{}",
        r.json()
    );
    let r = demo
        .admin_patch("acme", json!({"overrides": {"limits": {"workflows": -3}}}))
        .await;
    expect(&r, 400, "malformed_body");
    assert!(r.json()["detail"]
        .as_str()
        .unwrap()
        .starts_with("overrides.limits.workflows"));
    expect(
        &demo.admin_patch("acme", json!({"colour": "blue"})).await,
        400,
        "malformed_body",
    );
    expect(
        &demo.admin_patch("acme", json!({"plan": "platinum"})).await,
        422,
        "unknown_plan",
    );
    expect(
        &demo.admin_patch("nobody", json!({"plan": "pro"})).await,
        404,
        "unknown_tenant",
    );
    expect(
        &demo.get("/admin/tenants/..%2Fetc", &[ADMIN]).await,
        400,
        "malformed_tenant_id",
    );
    let acme = demo.get("/admin/tenants/acme", &[ADMIN]).await.json();
    assert_eq!(
        (acme["plan"].as_str(), acme["status"].as_str()),
        (Some("free"), Some("active"))
    );

    let list = demo.get("/admin/tenants", &[ADMIN]).await.json();
    assert_eq!(list["tenants"].as_array().unwrap().len(), 6);
}

#[tokio::test]
async fn plan_status_and_catalog_reload_apply_to_the_next_request_and_keep_counters() {
    // Time stands still: the exact counts below cannot move with a minute.
    let demo = start(Arc::new(MemoryStore::with_clock(Arc::new(
        ManualClock::new(T0),
    ))))
    .await;
    let acme = [("x-tenant-id", "acme")];
    for _ in 0..3 {
        assert_eq!(demo.get("/v1/me", &acme).await.status, 200);
    }
    // Plan change: the next request runs on pro (300/min), the 3 calls are kept.
    let r = demo.admin_patch("acme", json!({"plan": "pro"})).await;
    assert_eq!(r.status, 200);
    let r = demo.get("/v1/me", &acme).await;
    assert_eq!(r.json()["plan"], "pro");
    assert_eq!(parse_ratelimit(r.header("ratelimit").unwrap()).1, 300 - 4);

    // Status change.
    demo.admin_patch("acme", json!({"status": "suspended"}))
        .await;
    assert_eq!(
        demo.get("/v1/me", &acme).await.json()["code"],
        "tenant_inactive"
    );
    demo.admin_patch("acme", json!({"status": "active"})).await;

    // A temporary boost through overrides: the feature appears at once.
    let r = demo.call("POST", "/v1/patterns", &acme, "").await;
    assert_eq!(r.status, 201, "pro has custom_patterns");
    demo.admin_patch(
        "acme",
        json!({"overrides": {"features": {"custom_patterns": false}}}),
    )
    .await;
    assert_eq!(
        demo.call("POST", "/v1/patterns", &acme, "").await.status,
        403
    );

    // Reload from the file: edit it, reload, the next request sees it.
    let text = std::fs::read_to_string(&demo.plans).unwrap();
    let edited = text.replacen(
        "id = \"acme\"\nplan = \"free\"",
        "id = \"acme\"\nplan = \"enterprise\"",
        1,
    );
    assert_ne!(text, edited);
    std::fs::write(&demo.plans, &edited).unwrap();
    let r = demo.call("POST", "/admin/reload", &[ADMIN], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"plans": 3, "tenants": 6}));
    let r = demo.get("/v1/me", &acme).await;
    assert_eq!(r.json()["plan"], "enterprise");
    // Counters survived every change: 3 + 1 /v1/me, 1 /v1/patterns (the
    // refused one stopped at the feature gate, before the rate limit), 1
    // /v1/me after the reload; the suspended request was refused before
    // admission.
    let usage = demo.usage("acme").await;
    assert_eq!(policy(&usage, "api_calls_per_minute")["used"], 6);

    // A broken catalog is refused with the offending path; the old one stays.
    std::fs::write(
        &demo.plans,
        edited.replace(
            "limit = 100, period = \"day\"",
            "limit = -1, period = \"day\"",
        ),
    )
    .unwrap();
    let r = demo.call("POST", "/admin/reload", &[ADMIN], "").await;
    assert_eq!(r.status, 422);
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("plans[0].quotas.executions_per_day.limit"),
        "{}",
        r.json()
    );
    assert_eq!(demo.get("/v1/me", &acme).await.json()["plan"], "enterprise");
}

/// 2026-12-03T10:00:30Z: 30 s into a minute, 13 h 59 min 30 s before midnight.
const T0: u64 = 1_796_292_030_000;

/// The order of the demo's route layers is the design's (resolve, validate,
/// gate, check, admit): a request refused by the feature gate or the resource
/// limit consumes no rate, and a tenant out of rate still learns that its plan
/// lacks the feature (403, not 429).
#[tokio::test]
async fn gates_and_resource_limits_run_before_the_rate_limit() {
    let clock = Arc::new(ManualClock::new(T0));
    let demo = start(Arc::new(MemoryStore::with_clock(clock))).await;
    let h = [("x-tenant-id", "acme")];
    for i in 0..7 {
        let r = demo.create_workflow("acme", i).await;
        if i < 5 {
            assert_eq!(r.status, 201, "workflow {i}");
        } else {
            assert_eq!(r.status, 403, "workflow {i}");
            assert_eq!(r.json()["code"], "resource_limit_reached");
        }
    }
    let r = demo.call("POST", "/v1/patterns", &h, "").await;
    assert_eq!(r.json()["code"], "feature_not_in_plan");
    let usage = demo.usage("acme").await;
    assert_eq!(policy(&usage, "api_calls_per_minute")["used"], 5);
    // Out of rate (60 a minute on free): the gate still answers first.
    for _ in 5..60 {
        assert_eq!(demo.get("/v1/me", &h).await.status, 200);
    }
    assert_eq!(demo.get("/v1/me", &h).await.json()["code"], "rate_limited");
    let r = demo.call("POST", "/v1/patterns", &h, "").await;
    assert_eq!(
        (r.status.as_u16(), r.json()["code"].as_str()),
        (403, Some("feature_not_in_plan"))
    );
}

/// `clock`: the store's manual clock (exact figures), or `None` for a store
/// on real time (Redis), where only what holds at any instant is asserted.
async fn usage_equals_consumption(store: Arc<dyn CounterStore>, clock: Option<Arc<ManualClock>>) {
    let started = std::time::Instant::now();
    let day = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 86_400
    };
    let first_day = day();
    let demo = start(store).await;
    let h = [("x-tenant-id", "globex")];
    for i in 0..4 {
        assert_eq!(demo.create_workflow("globex", i).await.status, 201);
    }
    for _ in 0..3 {
        let r = demo
            .call("POST", "/v1/workflows/1/executions", &h, "")
            .await;
        assert_eq!(r.status, 200);
    }
    for _ in 0..5 {
        assert_eq!(demo.get("/v1/workflows", &h).await.status, 200);
    }
    let usage = demo.usage("globex").await;
    assert_eq!(usage["plan"], "pro");
    let api = policy(&usage, "api_calls_per_minute");
    let runs = policy(&usage, "executions_per_day");
    assert_eq!(api["limit"], 300);
    assert_eq!(runs["limit"], 5000);
    assert_eq!(policy(&usage, "concurrent_executions")["used"], 0);
    assert_eq!(policy(&usage, "workflows")["used"], 4);
    let used = |p: &Value| p["used"].as_u64().unwrap();
    if clock.is_some() {
        // Time stood still: exact figures.
        assert_eq!(used(api), 12);
        assert_eq!(api["remaining"], 288);
        assert_eq!(api["utilization_percent"], 4.0);
        assert_eq!(used(runs), 3);
        let midnight = T0 - T0 % 86_400_000 + 86_400_000;
        assert_eq!(runs["reset_seconds"], (midnight - T0) / 1000);
    } else {
        // Real time: a window boundary may have passed during the test,
        // discounting at most the share of the 12 calls that the elapsed
        // time is of the window; a UTC midnight may have reset the quota.
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let least = 12 - (12 * elapsed_ms).div_ceil(60_000).min(12);
        assert!(
            (least..=12).contains(&used(api)),
            "api used {api}, at least {least}"
        );
        assert_eq!(api["remaining"].as_u64().unwrap(), 300 - used(api));
        let runs_least = if day() == first_day { 3 } else { 0 };
        assert!((runs_least..=3).contains(&used(runs)), "runs {runs}");
        let reset = runs["reset_seconds"].as_u64().unwrap();
        assert!((1..=86_400).contains(&reset));
    }
    // Reading usage consumed nothing.
    let again = demo.usage("globex").await;
    let api_again = used(policy(&again, "api_calls_per_minute"));
    if clock.is_some() {
        assert_eq!(api_again, 12);
    } else {
        assert!(api_again <= used(api), "{api_again} after {}", used(api));
    }
}

#[tokio::test]
async fn usage_equals_consumption_on_memory() {
    let clock = Arc::new(ManualClock::new(T0));
    usage_equals_consumption(
        Arc::new(MemoryStore::with_clock(clock.clone())),
        Some(clock),
    )
    .await;
}

#[tokio::test]
async fn usage_equals_consumption_on_redis() {
    let redis = redis_server::RedisServer::new();
    let store = RedisStore::connect(redis.url().as_str()).await.unwrap();
    usage_equals_consumption(Arc::new(store), None).await;
}
