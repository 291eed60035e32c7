//! The demo as real processes (issue 8, parts 1 and 3, long run): four
//! `axum_server` processes (the compiled example, configured only through
//! its environment: `ADDR`, `PLANS`, `REDIS_URL`, `STORE_FAILURE`,
//! `STORE_TIMEOUT_MS`) sharing one Redis or one Redis Cluster, driven by
//! real HTTP clients.
//!
//! These tests are `#[ignore]`d: they need the example built with the
//! `redis` feature. `scripts/reliability.sh` builds it and runs them:
//!
//! ```sh
//! cargo build --example axum_server --all-features
//! cargo test --all-features --test reliability_processes -- --ignored --nocapture --test-threads=1
//! ```
//!
//! The binary is `$TT_DEMO_BIN`, else `examples/axum_server` next to this
//! test's directory (`target/debug/examples/axum_server`).
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

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use rel::{count, drive, histogram, key, request, scale, Backend, Load, Shot};

const PROCESSES: usize = 4;

const CATALOG: &str = r#"
[[plans]]
name = "log"
rates = { api_calls_per_minute = { limit = 100, window = "1m", algorithm = "sliding_log" } }
[[plans]]
name = "quota"
quotas = { executions_per_day = { limit = 150, period = "day" } }
[[plans]]
name = "conc"
concurrency = { concurrent_executions = { limit = 5 } }
[[tenants]]
id = "log"
plan = "log"
[[tenants]]
id = "quota"
plan = "quota"
[[tenants]]
id = "conc"
plan = "conc"
"#;

fn demo_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("TT_DEMO_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("examples").join("axum_server"))
        .unwrap()
}

/// One demo process, killed on drop.
struct DemoProcess {
    child: Child,
    base: String,
}

impl Drop for DemoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl DemoProcess {
    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `n` demo processes on `redis_url` and waits until each answers
/// `GET /health`.
async fn spawn_demos(n: usize, redis_url: &str, plans: &std::path::Path) -> Vec<DemoProcess> {
    let bin = demo_bin();
    assert!(
        bin.exists(),
        "{} not found: build it with `cargo build --example axum_server --all-features` \
         (scripts/reliability.sh does) or set TT_DEMO_BIN",
        bin.display()
    );
    let mut out = Vec::new();
    for _ in 0..n {
        let port = free_port();
        let child = Command::new(&bin)
            .env("ADDR", format!("127.0.0.1:{port}"))
            .env("PLANS", plans)
            .env("REDIS_URL", redis_url)
            .env("STORE_FAILURE", "closed")
            .env("STORE_TIMEOUT_MS", "2000")
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        out.push(DemoProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
        });
    }
    let http = http_util::client();
    for p in &mut out {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("the demo exited with {status}: was it built with the redis feature?");
            }
            let req = Request::get(format!("{}/health", p.base))
                .body(Full::new(Bytes::new()))
                .unwrap();
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(1), http.request(req)).await
            {
                if r.status() == 200 {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the demo did not answer within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    out
}

fn plans_file() -> PathBuf {
    let path = std::env::temp_dir().join(format!("tt-plans-{}.toml", std::process::id()));
    std::fs::write(&path, CATALOG).unwrap();
    path
}

fn only(what: &str, shots: &[Shot], allowed: &[u16]) {
    for s in shots {
        assert!(
            s.status.is_some_and(|st| allowed.contains(&st)),
            "{what}: unexpected answer {s:?}"
        );
    }
}

async fn exact(backend: Backend) {
    let started = Instant::now();
    let plans = plans_file();
    let demos = spawn_demos(PROCESSES, &backend.url(), &plans).await;
    let bases: Vec<String> = demos.iter().map(|d| d.base.clone()).collect();
    let per_client = scale(12, 120);
    let load = Load {
        clients: 8,
        per_client: Some(per_client),
        ..Load::default()
    };
    let sent = PROCESSES * 8 * per_client;

    let shots = drive(
        &bases,
        load.clone(),
        Arc::new(|base, _| request(Method::GET, &format!("{base}/v1/me"), "log")),
    )
    .await;
    only("sliding log", &shots, &[200, 429]);
    let sl = key("log", "sl", "api_calls_per_minute");
    let in_redis = backend.int(&sl, &["ZCARD", &sl]);
    println!(
        "FIGURES processes {} ({PROCESSES} demo processes): sliding log 100/min: sent {sent}, \
         admitted {}, in Redis {in_redis} [{}]",
        backend.name(),
        count(&shots, 200),
        histogram(&shots)
    );
    assert_eq!(count(&shots, 200), 100);
    assert_eq!(in_redis, 100);

    let shots = drive(
        &bases,
        load.clone(),
        Arc::new(|base, _| {
            request(
                Method::POST,
                &format!("{base}/v1/workflows/1/executions"),
                "quota",
            )
        }),
    )
    .await;
    only("quota", &shots, &[200, 429]);
    let cal = key("quota", "cald", "executions_per_day");
    let in_redis = backend.int_or_nil(&cal, &["GET", &cal]);
    println!(
        "FIGURES processes {} ({PROCESSES} demo processes): calendar quota 150/day: sent {sent}, \
         admitted {}, in Redis {in_redis} [{}]",
        backend.name(),
        count(&shots, 200),
        histogram(&shots)
    );
    assert_eq!(count(&shots, 200), 150);
    assert_eq!(in_redis, 150);

    let cc = key("conc", "cc", "concurrent_executions");
    let rounds = scale(3, 20);
    for round in 0..rounds {
        let shots = drive(
            &bases,
            Load {
                clients: 8,
                per_client: Some(1),
                ..Load::default()
            },
            Arc::new(|base, _| {
                request(
                    Method::POST,
                    &format!("{base}/v1/workflows/1/executions?duration_ms=1500"),
                    "conc",
                )
            }),
        )
        .await;
        only("concurrency", &shots, &[200, 429]);
        assert_eq!(
            count(&shots, 200),
            5,
            "round {round}: {}",
            histogram(&shots)
        );
        rel::wait_until(Duration::from_secs(5), || backend.slots(&cc) == 0)
            .await
            .expect("leases left after a round");
    }
    println!(
        "FIGURES processes {} ({PROCESSES} demo processes): concurrency 5: {rounds} rounds of 32 \
         simultaneous 1.5 s executions, exactly 5 admitted each, lease set empty after each; \
         test took {:?}",
        backend.name(),
        started.elapsed()
    );
    let _ = std::fs::remove_file(plans);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the demo built with --features redis: scripts/reliability.sh"]
async fn demo_processes_exact_limits_single_redis() {
    exact(Backend::single()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the demo built with --features redis: scripts/reliability.sh"]
async fn demo_processes_exact_limits_redis_cluster() {
    exact(Backend::cluster()).await;
}

/// Executions of 0..20 ms on the demo processes, a third of the clients
/// giving up after 1..15 ms: no slot left in Redis, and each process's
/// `VmRSS` before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the demo built with --features redis: scripts/reliability.sh"]
async fn demo_processes_leak_nothing() {
    let started = Instant::now();
    let backend = Backend::single();
    let plans = plans_file();
    let demos = spawn_demos(PROCESSES, &backend.url(), &plans).await;
    let cc = key("conc", "cc", "concurrent_executions");
    let run = |total: usize, seed: u64| {
        let bases: Vec<String> = demos.iter().map(|d| d.base.clone()).collect();
        async move {
            let clients = 16;
            let mut tasks = Vec::new();
            for c in 0..clients {
                let base = bases[c % bases.len()].clone();
                let n = total / clients + usize::from(c < total % clients);
                tasks.push(tokio::spawn(async move {
                    let http = http_util::client();
                    let mut x = seed ^ (c as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    let mut next = move || {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x
                    };
                    let (mut ok, mut refused, mut gave_up) = (0u64, 0u64, 0u64);
                    for _ in 0..n {
                        let req = request(
                            Method::POST,
                            &format!(
                                "{base}/v1/workflows/1/executions?duration_ms={}",
                                next() % 20
                            ),
                            "conc",
                        );
                        let patience = if next() % 3 == 0 {
                            Duration::from_millis(1 + next() % 15)
                        } else {
                            Duration::from_secs(5)
                        };
                        let answer = tokio::time::timeout(patience, async {
                            let r = http.request(req).await.ok()?;
                            let status = r.status();
                            r.into_body().collect().await.ok()?;
                            Some(status)
                        })
                        .await;
                        match answer {
                            Ok(Some(s)) if s == 200 => ok += 1,
                            Ok(Some(_)) => refused += 1,
                            _ => gave_up += 1,
                        }
                    }
                    (ok, refused, gave_up)
                }));
            }
            let mut sum = (0, 0, 0);
            for t in tasks {
                let (a, b, c) = t.await.unwrap();
                sum = (sum.0 + a, sum.1 + b, sum.2 + c);
            }
            sum
        }
    };
    run(2_000, 1).await;
    rel::wait_until(Duration::from_secs(5), || backend.slots(&cc) == 0)
        .await
        .expect("slots after the warm-up");
    let before: Vec<u64> = demos.iter().map(DemoProcess::rss_kib).collect();
    let total = scale(5_000, 100_000);
    let run_started = Instant::now();
    let (ok, refused, gave_up) = run(total, 42).await;
    let took = run_started.elapsed();
    let zero = rel::wait_until(Duration::from_secs(5), || backend.slots(&cc) == 0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after: Vec<u64> = demos.iter().map(DemoProcess::rss_kib).collect();
    println!(
        "FIGURES processes leaks ({PROCESSES} demo processes, redis-server): {total} executions \
         in {took:?}: {ok} admitted, {refused} refused, {gave_up} given up by the client; slots \
         in Redis after: {} (zero after {zero:?}); VmRSS per process before {before:?} KiB, \
         after {after:?} KiB; test took {:?}",
        backend.slots(&cc),
        started.elapsed()
    );
    assert!(zero.is_some(), "slots left in Redis");
    assert!(gave_up > 0 && refused > 0);
    for (b, a) in before.iter().zip(&after) {
        assert!(
            *a < b + 32 * 1024,
            "a demo process grew from {b} KiB to {a} KiB"
        );
    }
    let _ = std::fs::remove_file(plans);
}
