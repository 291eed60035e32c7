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
//! * **ours3**: the same stack with three rules on the route: the rate
//!   limit, a daily quota and a concurrency limit (one store call), the
//!   fields of all three written into the response;
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
//! OVERHEAD_ALLOCS=ours:10000 target/release/deps/overhead-…   # heap allocations per request
//! OVERHEAD_CPU=1000000:5 target/release/deps/overhead-…       # CPU ns per request, interleaved
//! ```
//!
//! The `OVERHEAD_CPU=<requests>:<rounds>` mode serves `<requests>` requests
//! with each variant in turn (one task, current-thread runtime), `<rounds>`
//! times, and reports the CPU time of the thread per request (user +
//! system, `/proc/thread-self/stat`, 10 ms ticks: use slices of a second or
//! more) and each round's ratios: a figure that a busy machine disturbs
//! much less than wall time.
//!
//! The bench binary counts heap allocations with a wrapping global
//! allocator; counting is switched on only in the `OVERHEAD_ALLOCS` mode
//! (elsewhere it costs one relaxed load per allocation, for every variant).
//!
//! After criterion has run, the medians are collected into
//! `target/bench-results/overhead.json`.

#[path = "common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// The system allocator, counting allocations while `COUNTING` is on.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const TENANT_HEADER: HeaderName = HeaderName::from_static("x-tenant-id");

const PLANS: &str = r#"
[[plans]]
name = "bench"
features = ["reports"]
rates = { api_calls = { limit = 1000000000000, window = "1m" } }
quotas = { calls_per_day = { limit = 1000000000000, period = "day" } }
concurrency = { in_flight = { limit = 1000000 } }

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
        "ours3" => {
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
                            .rule(Rule::rate("api_calls"))
                            .rule(Rule::quota("calls_per_day"))
                            .rule(Rule::concurrency("in_flight")),
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

const VARIANTS: [&str; 5] = ["bare", "ours", "ours3", "governor_headers", "governor"];

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

/// CPU time (user + system) of the calling thread, in clock ticks of
/// 10 ms, from `/proc/thread-self/stat` (0 where unavailable).
fn thread_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // The fields after the command name (in parentheses); utime and stime
    // are fields 14 and 15 of the line, 12 and 13 of these.
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0)
}

/// The `OVERHEAD_CPU` mode: CPU ns per request of each variant, rounds of
/// all variants one after the other.
fn cpu_mode(requests: u64, rounds: usize) {
    const MEASURED: [&str; 5] = ["bare", "ours", "ours3", "governor_headers", "governor"];
    let rt = single_thread();
    let mut services: Vec<BoxSvc> = MEASURED.iter().map(|name| variant(name)).collect();
    for svc in &mut services {
        rt.block_on(serve(svc, 10_000, "acme")); // warm-up
    }
    let mut per_round: Vec<Vec<f64>> = Vec::new();
    for round in 0..rounds {
        let mut row = Vec::new();
        for svc in &mut services {
            let before = thread_cpu_ticks();
            rt.block_on(serve(svc, requests, "acme"));
            let ticks = thread_cpu_ticks() - before;
            row.push(ticks as f64 * 1e7 / requests as f64);
        }
        eprintln!(
            "round {round}: {} (load {})",
            MEASURED
                .iter()
                .zip(&row)
                .map(|(n, ns)| format!("{n} {ns:.0} ns"))
                .collect::<Vec<_>>()
                .join(", "),
            common::load_average()
        );
        per_round.push(row);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let column = |i: usize| per_round.iter().map(|r| r[i]).collect::<Vec<_>>();
    let ratio = |a: usize, b: usize| per_round.iter().map(|r| r[a] / r[b]).collect::<Vec<_>>();
    let mut rows = Vec::new();
    for (i, name) in MEASURED.iter().enumerate() {
        let ns = column(i);
        let (lo, hi) = ns
            .iter()
            .fold((f64::MAX, 0f64), |(l, h), &v| (l.min(v), h.max(v)));
        rows.push(vec![
            name.to_string(),
            format!("{:.0}", median(ns)),
            format!("{lo:.0}"),
            format!("{hi:.0}"),
        ]);
    }
    for (name, a) in [("ours/governor_headers", 1), ("ours3/governor_headers", 2)] {
        let r = ratio(a, 3);
        let (lo, hi) = r
            .iter()
            .fold((f64::MAX, 0f64), |(l, h), &v| (l.min(v), h.max(v)));
        rows.push(vec![
            name.to_string(),
            format!("{:.2}", median(r)),
            format!("{lo:.2}"),
            format!("{hi:.2}"),
        ]);
    }
    let table = common::csv(&["variant_or_ratio", "median", "min", "max"], &rows);
    print!("{table}");
    common::write_result("overhead_cpu.csv", &table);
}

fn main() {
    if let Ok(spec) = std::env::var("OVERHEAD_CPU") {
        let (requests, rounds) = spec.split_once(':').expect("OVERHEAD_CPU=requests:rounds");
        cpu_mode(
            requests.parse().expect("a number of requests"),
            rounds.parse().expect("a number of rounds"),
        );
        return;
    }
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
    // Allocation-count mode: heap allocations per request, after a warm-up.
    if let Ok(spec) = std::env::var("OVERHEAD_ALLOCS") {
        let (name, n) = spec
            .split_once(':')
            .expect("OVERHEAD_ALLOCS=variant:requests");
        let n: u64 = n.parse().expect("a number of requests");
        let mut svc = variant(name);
        let rt = single_thread();
        rt.block_on(serve(&mut svc, 1000, "acme"));
        COUNTING.store(true, Ordering::SeqCst);
        rt.block_on(serve(&mut svc, n, "acme"));
        COUNTING.store(false, Ordering::SeqCst);
        let total = ALLOCATIONS.load(Ordering::SeqCst);
        println!(
            "{name}: {total} allocations for {n} requests = {:.2} per request",
            total as f64 / n as f64
        );
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
