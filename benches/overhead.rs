//! In-process cost per request of the full stack, against `tower_governor`
//! and against the bare service (issue 7, item 1).
//!
//! * **ours**: `TenancyLayer` (HeaderResolver + MemoryDirectory lookup) →
//!   `RequireFeatureLayer` → `AdmissionLayer` with one sliding-window rate
//!   rule on a `MemoryStore` (limit never reached), `RateLimit` fields written
//!   into the response;
//! * **governor**: `tower_governor` 0.8 `GovernorLayer`, GCRA keyed by the
//!   same header (`governor_headers`: with `.use_headers()`, i.e. rate-limit
//!   fields in the response like ours; `governor`: without);
//! * **bare**: the service alone.
//!
//! All wrap the same trivial `service_fn`, and every request is built,
//! driven with `ready().await` + `call(..).await`, and its response dropped
//! inside the timed loop. `1task`: one task on a current-thread runtime;
//! `2tasks`: the requests split over 2 tasks on a 2-worker multi-thread
//! runtime (wall time per request), all for one tenant; `2tasks_2tenants`
//! (ours and governor_headers): the same, each task for its own tenant.
//!
//! ```text
//! cargo bench --bench overhead                       # criterion
//! OVERHEAD_INSTR=ours:100000 target/release/deps/overhead-…   # one loop, for callgrind
//! ```
//!
//! After criterion has run, the medians are collected into
//! `target/bench-results/overhead.json`.

#[path = "common/mod.rs"]
mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use criterion::Criterion;
use http::{HeaderName, HeaderValue, Request, Response};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;
use tower_governor::{GovernorError, GovernorLayer};
use tower_tenancy::resolve::HeaderResolver;
use tower_tenancy::store::MemoryStore;
use tower_tenancy::{
    AdmissionLayer, Catalog, MemoryDirectory, RequireFeatureLayer, Rule, TenancyLayer,
};

const TENANT_HEADER: HeaderName = HeaderName::from_static("x-tenant-id");

const PLANS: &str = r#"
[[plans]]
name = "bench"
features = ["reports"]
rates = { api_calls = { limit = 1000000000000, window = "1m" } }

[[tenants]]
id = "acme"
plan = "bench"

[[tenants]]
id = "globex"
plan = "bench"
"#;

/// Task `i` of a `_2tenants` run sends `TENANTS[i % 2]`; all others `acme`.
const TENANTS: [&str; 2] = ["acme", "globex"];

fn request(tenant: &'static str) -> Request<Body> {
    Request::builder()
        .uri("/v1/reports")
        .header(TENANT_HEADER, HeaderValue::from_static(tenant))
        .body(Body::empty())
        .expect("valid request")
}

async fn handler(_req: Request<Body>) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(Body::empty()))
}

/// The same header as key, for tower_governor.
#[derive(Clone)]
struct TenantHeader;

impl KeyExtractor for TenantHeader {
    type Key = String;
    fn extract<T>(&self, req: &Request<T>) -> Result<String, GovernorError> {
        req.headers()
            .get(TENANT_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

type BoxSvc = tower::util::BoxCloneSyncService<Request<Body>, Response<()>, Infallible>;

/// Drops the body type so that every variant has one service type; the
/// response (and with it the body and any lease) is dropped by the caller.
fn boxed<S, B>(svc: S) -> BoxSvc
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    BoxSvc::new(svc.map_response(|r: Response<B>| {
        // Keep the body alive until here so that its drop is measured too.
        let (parts, body) = r.into_parts();
        drop(body);
        Response::from_parts(parts, ())
    }))
}

/// The variants, by name.
fn variant(name: &str) -> BoxSvc {
    let inner = service_fn(handler);
    match name {
        "bare" => boxed(inner),
        "tenancy" => {
            let catalog = Catalog::from_toml_str(PLANS).expect("plans");
            boxed(
                ServiceBuilder::new()
                    .layer(TenancyLayer::new(
                        HeaderResolver::new("x-tenant-id"),
                        MemoryDirectory::from_catalog(&catalog),
                    ))
                    .service(inner),
            )
        }
        "ours" => {
            let catalog = Catalog::from_toml_str(PLANS).expect("plans");
            boxed(
                ServiceBuilder::new()
                    .layer(TenancyLayer::new(
                        HeaderResolver::new("x-tenant-id"),
                        MemoryDirectory::from_catalog(&catalog),
                    ))
                    .layer(RequireFeatureLayer::new("reports"))
                    .layer(
                        AdmissionLayer::new(Arc::new(MemoryStore::new()))
                            .rule(Rule::rate("api_calls")),
                    )
                    .service(inner),
            )
        }
        "governor" => {
            let config = GovernorConfigBuilder::default()
                .key_extractor(TenantHeader)
                .per_nanosecond(1)
                .burst_size(u32::MAX)
                .finish()
                .expect("config");
            boxed(
                ServiceBuilder::new()
                    .layer(GovernorLayer::new(config))
                    .service(inner),
            )
        }
        "governor_headers" => {
            let config = GovernorConfigBuilder::default()
                .key_extractor(TenantHeader)
                .per_nanosecond(1)
                .burst_size(u32::MAX)
                .use_headers()
                .finish()
                .expect("config");
            boxed(
                ServiceBuilder::new()
                    .layer(GovernorLayer::new(config))
                    .service(inner),
            )
        }
        other => panic!("unknown variant {other}"),
    }
}

/// Serves `n` requests one after the other.
async fn serve(svc: &mut BoxSvc, n: u64, tenant: &'static str) {
    for _ in 0..n {
        let response = svc
            .ready()
            .await
            .expect("ready")
            .call(request(tenant))
            .await
            .expect("infallible");
        assert_eq!(response.status(), 200);
    }
}

fn single_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn multi_thread(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Wall time of `iters` requests split over `tasks` tasks.
/// Wall time of `iters` requests split over `tasks` tasks, all for one
/// tenant or (`distinct`) task `i` for `TENANTS[i % 2]`.
fn run_tasks(
    rt: &tokio::runtime::Runtime,
    svc: &BoxSvc,
    iters: u64,
    tasks: u64,
    distinct: bool,
) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|i| {
                let mut svc = svc.clone();
                let n = iters / tasks + u64::from(i < iters % tasks);
                let tenant = if distinct {
                    TENANTS[i as usize % 2]
                } else {
                    "acme"
                };
                tokio::spawn(async move { serve(&mut svc, n, tenant).await })
            })
            .collect();
        for handle in handles {
            handle.await.expect("task");
        }
        start.elapsed()
    })
}

const VARIANTS: [&str; 4] = ["bare", "ours", "governor_headers", "governor"];

fn benches(c: &mut Criterion) {
    let tasks = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let single = single_thread();
    let multi = multi_thread(tasks as usize);
    let mut group = c.benchmark_group("overhead");
    for name in VARIANTS {
        let svc = variant(name);
        group.bench_function(format!("{name}/1task"), |b| {
            b.iter_custom(|iters| {
                let mut svc = svc.clone();
                single.block_on(async {
                    let start = Instant::now();
                    serve(&mut svc, iters, "acme").await;
                    start.elapsed()
                })
            })
        });
        group.bench_function(format!("{name}/{tasks}tasks"), |b| {
            b.iter_custom(|iters| run_tasks(&multi, &svc, iters, tasks, false))
        });
        if name == "ours" || name == "governor_headers" {
            // The same with two tenants: what one hot tenant's shared state costs.
            group.bench_function(format!("{name}/{tasks}tasks_2tenants"), |b| {
                b.iter_custom(|iters| run_tasks(&multi, &svc, iters, tasks, true))
            });
        }
    }
    group.finish();
}

/// Reads criterion's medians back into one result file.
fn collect() {
    let tasks = std::thread::available_parallelism().map_or(2, |n| n.get());
    let base = common::results_dir()
        .parent()
        .expect("target dir")
        .join("criterion/overhead");
    let median = |id: &str| -> Option<f64> {
        let text = std::fs::read_to_string(base.join(id).join("new/estimates.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["median"]["point_estimate"].as_f64()
    };
    let mut rows = Vec::new();
    let mut json = serde_json::Map::new();
    for mode in [
        "1task".to_owned(),
        format!("{tasks}tasks"),
        format!("{tasks}tasks_2tenants"),
    ] {
        for name in VARIANTS {
            let Some(ns) = median(&format!("{name}_{mode}")) else {
                continue;
            };
            rows.push(vec![name.to_owned(), mode.clone(), format!("{ns:.1}")]);
            json.insert(format!("{name}/{mode}"), serde_json::json!(ns));
        }
    }
    common::write_result(
        "overhead.csv",
        &common::csv(&["variant", "mode", "median_ns_per_request"], &rows),
    );
    let out = serde_json::json!({
        "machine": common::machine(),
        "median_ns_per_request": json,
    });
    common::write_result(
        "overhead.json",
        &serde_json::to_string_pretty(&out).expect("json"),
    );
}

fn main() {
    // Instruction-count mode: one variant, a fixed number of requests, no
    // criterion (run under `valgrind --tool=callgrind`).
    if let Ok(spec) = std::env::var("OVERHEAD_INSTR") {
        let (name, n) = spec
            .split_once(':')
            .expect("OVERHEAD_INSTR=variant:requests");
        let n: u64 = n.parse().expect("a number of requests");
        let mut svc = variant(name);
        single_thread().block_on(serve(&mut svc, n, "acme"));
        return;
    }
    if !common::full_run() {
        // Smoke pass (cargo test --all-targets): every variant answers.
        for name in VARIANTS.into_iter().chain(["tenancy"]) {
            let mut svc = variant(name);
            single_thread().block_on(serve(&mut svc, 10, "acme"));
            run_tasks(&multi_thread(2), &svc, 10, 2, false);
            run_tasks(&multi_thread(2), &svc, 10, 2, true);
        }
        return;
    }
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        // No HTML report: criterion's plots need fonts (and the figures are
        // collected into overhead.json below).
        .without_plots()
        .configure_from_args();
    benches(&mut criterion);
    criterion.final_summary();
    collect();
}
