//! End to end over HTTP/1.1 with `wrk`: requests per second with and
//! without the layers, on the memory store and on Redis (issue 7, item 6).
//!
//! ```text
//! cargo build --release --features redis --example axum_server   # demo rows
//! cargo bench --features redis --bench e2e
//! ```
//!
//! * **driver app** (built here, served in this process on a 2-worker Tokio
//!   runtime): `GET /bare` is the handler alone; `GET /v1/reports` is the
//!   same handler behind `TenancyLayer` (header resolver, memory directory)
//!   → `RequireFeatureLayer` → `AdmissionLayer` (one sliding-window rate
//!   rule, limit never reached), on a `MemoryStore`, and (feature `redis`)
//!   a second app identical but for a `RedisStore` on a `redis-server`
//!   started here on a free port.
//! * **demo** (`target/release/examples/axum_server`, when built): `GET
//!   /health` (no layers) against `GET /v1/me` (tenancy + rate limit), with
//!   `PLANS` pointing at a catalog whose limit is never reached,
//!   `RUST_LOG=warn`; and a second instance with `REDIS_URL` on the bench's
//!   redis-server (`STORE_FAILURE=closed`: a store failure is a 503, which
//!   fails the bench, never a silent fallback to memory).
//!
//! `wrk -t2 -c64 -d5s --latency -H 'x-tenant-id: acme'`, on the same
//! 2-core machine as the server. Writes `target/bench-results/e2e.{csv,json}`.

#[path = "common/mod.rs"]
mod common;

#[cfg(feature = "redis")]
#[path = "../tests/common/redis_server.rs"]
mod redis_server;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use tower_tenancy::resolve::HeaderResolver;
use tower_tenancy::store::{CounterStore, MemoryStore};
use tower_tenancy::{
    AdmissionLayer, Catalog, MemoryDirectory, RequireFeatureLayer, Rule, TenancyLayer,
};

const PLANS: &str = r#"
[[plans]]
name = "bench"
features = ["reports", "workflows"]
rates = { api_calls = { limit = 1000000000000, window = "1m" }, api_calls_per_minute = { limit = 1000000000000, window = "1m" } }

[[tenants]]
id = "acme"
plan = "bench"
"#;

fn app(store: Arc<dyn CounterStore>) -> Router {
    let catalog = Catalog::from_toml_str(PLANS).expect("plans");
    let tenant_routes = Router::new()
        .route(
            "/v1/reports",
            get(|| async { "ok" })
                .route_layer(AdmissionLayer::new(store).rule(Rule::rate("api_calls")))
                .route_layer(RequireFeatureLayer::new("reports")),
        )
        .layer(TenancyLayer::new(
            HeaderResolver::new("x-tenant-id"),
            MemoryDirectory::from_catalog(&catalog),
        ));
    Router::new()
        .route("/bare", get(|| async { "ok" }))
        .merge(tenant_routes)
}

/// Serves `app` on a free loopback port from `rt`; returns the port.
fn serve(rt: &tokio::runtime::Runtime, app: Router) -> u16 {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    rt.spawn(async move { axum::serve(listener, app).await.expect("serve") });
    port
}

#[derive(Debug, Clone)]
struct WrkRun {
    setup: String,
    path: String,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
    requests: u64,
}

fn to_ms(value: &str) -> f64 {
    let (num, unit) = value.split_at(
        value
            .find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(value.len()),
    );
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}

fn wrk(setup: &str, port: u16, path: &str, seconds: u64) -> WrkRun {
    let url = format!("http://127.0.0.1:{port}{path}");
    let out = Command::new("wrk")
        .args(["-t2", "-c64", &format!("-d{seconds}s"), "--latency"])
        .args(["-H", "x-tenant-id: acme", &url])
        .output()
        .expect("run wrk (Debian: apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned()))
    };
    let rps: f64 = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unexpected wrk output: {text}"));
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    WrkRun {
        setup: setup.to_owned(),
        path: path.to_owned(),
        rps,
        p50_ms: field("50%").map_or(f64::NAN, |v| to_ms(&v)),
        p99_ms: field("99%").map_or(f64::NAN, |v| to_ms(&v)),
        non_2xx: field("Non-2xx or 3xx responses:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        requests,
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Starts the demo binary when it has been built; kills it on drop.
struct Demo(Child, u16);

impl Demo {
    /// The demo on the memory store, or on Redis at `redis_url` (the demo
    /// must then be built with `--features redis`; a store failure is a 503,
    /// not a silent fallback to memory).
    fn start(redis_url: Option<&str>) -> Option<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let bin = target.join("release/examples/axum_server");
        if !bin.exists() {
            return None;
        }
        let plans = common::results_dir().join("e2e-plans.toml");
        std::fs::write(&plans, PLANS).expect("write plans");
        let port = free_port();
        let mut command = Command::new(bin);
        command
            .env("ADDR", format!("127.0.0.1:{port}"))
            .env("PLANS", &plans)
            .env("RUST_LOG", "warn")
            .env_remove("REDIS_URL");
        if let Some(url) = redis_url {
            command
                .env("REDIS_URL", url)
                .env("STORE_FAILURE", "closed")
                .env("STORE_TIMEOUT_MS", "1000");
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Demo(child, port));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let full = common::full_run();
    let seconds = if full { 5 } else { 1 };
    let machine = common::machine();
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("wrk not found (Debian: apt-get install wrk): skipped");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // (setup, port, path); every target is run `rounds` times, interleaved,
    // and the run with the median requests/s is kept.
    let mut targets: Vec<(&str, u16, &str)> = Vec::new();
    let memory = serve(&rt, app(Arc::new(MemoryStore::new())));
    targets.push(("driver, no layers", memory, "/bare"));
    targets.push(("driver, layers, MemoryStore", memory, "/v1/reports"));

    #[cfg(feature = "redis")]
    let _redis = {
        let server = redis_server::RedisServer::new();
        let store = rt
            .block_on(tower_tenancy::store::RedisStore::connect(server.url()))
            .expect("connect");
        let port = serve(&rt, app(Arc::new(store)));
        targets.push(("driver, layers, RedisStore", port, "/v1/reports"));
        server
    };

    let demo = Demo::start(None);
    match &demo {
        Some(demo) => {
            targets.push(("demo axum_server, no layers", demo.1, "/health"));
            targets.push(("demo axum_server, layers, MemoryStore", demo.1, "/v1/me"));
        }
        None => eprintln!("demo not built (cargo build --release --example axum_server): skipped"),
    }
    #[cfg(feature = "redis")]
    let demo_redis = demo.as_ref().and_then(|_| Demo::start(Some(&_redis.url())));
    #[cfg(feature = "redis")]
    if let Some(demo) = &demo_redis {
        targets.push(("demo axum_server, layers, RedisStore", demo.1, "/v1/me"));
    }
    for (_, port, path) in &targets {
        wrk("warm-up", *port, path, 1);
    }
    let rounds = if full { 5 } else { 1 };
    let mut samples: Vec<Vec<WrkRun>> = vec![Vec::new(); targets.len()];
    for _ in 0..rounds {
        for (i, (setup, port, path)) in targets.iter().enumerate() {
            samples[i].push(wrk(setup, *port, path, seconds));
        }
    }
    let runs: Vec<WrkRun> = samples
        .into_iter()
        .map(|mut s| {
            s.sort_by(|a, b| a.rps.total_cmp(&b.rps));
            s.swap_remove(s.len() / 2)
        })
        .collect();
    drop(demo);
    #[cfg(feature = "redis")]
    drop(demo_redis);

    let bare = runs.first().map_or(f64::NAN, |r| r.rps);
    println!(
        "wrk -t2 -c64 -d{seconds}s on {} cores (load {})",
        machine["nproc"],
        common::load_average()
    );
    println!("| setup | path | requests/s | vs driver bare | p50 ms | p99 ms | non-2xx |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for r in &runs {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.3} | {:.3} | {} |",
            r.setup,
            r.path,
            r.rps,
            r.rps / bare,
            r.p50_ms,
            r.p99_ms,
            r.non_2xx
        );
        assert_eq!(r.non_2xx, 0, "{} answered non-2xx", r.setup);
        rows.push(vec![
            format!("\"{}\"", r.setup),
            r.path.clone(),
            format!("{:.0}", r.rps),
            format!("{:.3}", r.rps / bare),
            format!("{:.3}", r.p50_ms),
            format!("{:.3}", r.p99_ms),
            r.requests.to_string(),
        ]);
    }
    if !full {
        return;
    }
    common::write_result(
        "e2e.csv",
        &common::csv(
            &[
                "setup",
                "path",
                "requests_per_s",
                "vs_bare",
                "p50_ms",
                "p99_ms",
                "requests",
            ],
            &rows,
        ),
    );
    let out = serde_json::json!({
        "machine": machine,
        "load_1m_at_end": common::load_average(),
        "wrk": format!("wrk -t2 -c64 -d{seconds}s --latency -H 'x-tenant-id: acme'"),
        "rounds": rounds,
        "runs": runs.iter().map(|r| serde_json::json!({
            "setup": r.setup, "path": r.path, "requests_per_s": r.rps,
            "vs_driver_bare": r.rps / bare, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
            "requests": r.requests, "non_2xx": r.non_2xx,
        })).collect::<Vec<_>>(),
    });
    common::write_result(
        "e2e.json",
        &serde_json::to_string_pretty(&out).expect("json"),
    );
}
