//! Decisions per second and latency of `RedisStore` at concurrency 1, 16,
//! 64 and 256, next to the ceiling `redis-benchmark` reaches with the same
//! script call and next to `rate-limiter-flexible`'s `RateLimiterRedis`
//! (Node.js), all against one `redis-server` started here on a free port
//! (issue 7, item 4). Also counts the round trips of a request with three
//! policies (rate + quota + concurrency) in `INFO commandstats`.
//!
//! ```text
//! (cd benches/node && npm install)      # rate-limiter-flexible + ioredis
//! cargo bench --features redis --bench redis
//! ```
//!
//! * **ours**: `RedisStore::connect` (one multiplexed connection), one
//!   sliding-window check per call, `C` tasks on a 2-worker Tokio runtime
//!   splitting `N` calls; latency measured around each `admit().await`.
//! * **ceiling**: `redis-benchmark -c C -n N EVALSHA <sha of admit.lua> 1
//!   tt:{bench}:sw:api_calls a "" "" 1 sw 1000000000000 1 60000 0`: the very
//!   command our store sends (same key, same arguments), from C connections.
//! * **rate-limiter-flexible**: `benches/node/rlf.js`, `RateLimiterRedis` over
//!   one ioredis connection, `C` concurrent loops of `consume(key)`.
//!
//! Each configuration runs twice (interleaved); the faster run is kept.
//! Writes `target/bench-results/redis.{csv,json}`. Without the node modules
//! the peer is skipped (reported as missing).

#[path = "common/mod.rs"]
mod common;

#[path = "../tests/common/redis_server.rs"]
mod redis_server;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_server::RedisServer;
use tower_tenancy::store::{Algorithm, Check, CounterStore, RedisStore};
use tower_tenancy::{Period, TenantId};

const LIMIT: u64 = 1_000_000_000_000;
const WINDOW_MS: u64 = 60_000;

#[derive(Clone, Debug)]
struct Run {
    client: &'static str,
    concurrency: usize,
    requests: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn rate_check() -> Check {
    Check::new(
        "api_calls",
        Algorithm::SlidingWindow {
            window: Duration::from_millis(WINDOW_MS),
        },
        LIMIT,
        1,
    )
}

/// `N` admits split over `C` tasks.
async fn ours(store: &RedisStore, concurrency: usize, n: u64) -> Run {
    let tenant: TenantId = "bench".parse().expect("id");
    let checks: Arc<[Check]> = Arc::new([rate_check()]);
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency as u64)
        .map(|i| {
            let (store, tenant, checks) = (store.clone(), tenant.clone(), checks.clone());
            let calls = n / concurrency as u64 + u64::from(i < n % concurrency as u64);
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(calls as usize);
                for _ in 0..calls {
                    let t = Instant::now();
                    let admission = store.admit(&tenant, &checks).await.expect("redis answers");
                    latencies.push(t.elapsed().as_nanos() as u64);
                    assert!(admission.allowed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(n as usize);
    for task in tasks {
        latencies.extend(task.await.expect("task"));
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    Run {
        client: "ours",
        concurrency,
        requests: n,
        rps: n as f64 / elapsed.as_secs_f64(),
        p50_ms: common::percentile(&latencies, 50.0) as f64 / 1e6,
        p99_ms: common::percentile(&latencies, 99.0) as f64 / 1e6,
    }
}

/// `redis-benchmark` sending our script call.
fn ceiling(port: u16, sha: &str, key: &str, concurrency: usize, n: u64) -> Run {
    let limit = LIMIT.to_string();
    let window = WINDOW_MS.to_string();
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "-c",
            &concurrency.to_string(),
            "-n",
            &n.to_string(),
            "--csv",
        ])
        .args([
            "EVALSHA", sha, "1", key, "a", "", "", "1", "sw", &limit, "1", &window, "0",
        ])
        .output()
        .expect("run redis-benchmark (Debian: apt-get install redis-tools)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("\"EVALSHA"))
        .unwrap_or_else(|| panic!("unexpected redis-benchmark output: {stdout}"));
    let fields: Vec<f64> = line
        .split("\",\"")
        .skip(1)
        .map(|f| f.trim_matches('"').parse().expect("a number"))
        .collect();
    Run {
        client: "redis-benchmark",
        concurrency,
        requests: n,
        rps: fields[0],
        p50_ms: fields[3],
        p99_ms: fields[5],
    }
}

/// `node benches/node/rlf.js`, when its modules are installed.
fn peer(port: u16, concurrency: usize, n: u64) -> Option<Run> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/node");
    if !dir.join("node_modules/rate-limiter-flexible").exists() {
        return None;
    }
    let out = Command::new("node")
        .arg(dir.join("rlf.js"))
        .args([port.to_string(), concurrency.to_string(), n.to_string()])
        .output()
        .ok()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = match serde_json::from_str(stdout.trim()) {
        Ok(v) => v,
        Err(_) => {
            eprintln!(
                "rlf.js failed: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
    };
    Some(Run {
        client: "rate-limiter-flexible",
        concurrency,
        requests: n,
        rps: v["rps"].as_f64()?,
        p50_ms: v["p50_ms"].as_f64()?,
        p99_ms: v["p99_ms"].as_f64()?,
    })
}

/// All `cmdstat_*` calls, by command.
fn command_stats(server: &RedisServer) -> Vec<(String, u64)> {
    server
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

fn delta(before: &[(String, u64)], after: &[(String, u64)]) -> Vec<(String, u64)> {
    after
        .iter()
        .filter_map(|(name, calls)| {
            let was = before.iter().find(|(n, _)| n == name).map_or(0, |b| b.1);
            (calls > &was).then(|| (name.clone(), calls - was))
        })
        .collect()
}

/// Round trips of `n` admissions with a rate limit, a quota and a
/// concurrency limit; each lease is dropped before the next call.
async fn round_trips(server: &RedisServer, store: &RedisStore, n: u64) -> serde_json::Value {
    let tenant: TenantId = "round-trips".parse().expect("id");
    let checks = [
        rate_check(),
        Check::new(
            "executions_per_day",
            Algorithm::Calendar {
                period: Period::Day,
            },
            LIMIT,
            1,
        ),
        Check::new(
            "concurrent_executions",
            Algorithm::Concurrency {
                lease_ttl: Duration::from_secs(300),
            },
            10,
            1,
        ),
    ];
    // Warm: the script is loaded.
    drop(store.admit(&tenant, &checks).await.expect("admit"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = command_stats(server);
    for _ in 0..n {
        let admission = store.admit(&tenant, &checks).await.expect("admit");
        assert!(admission.allowed());
        drop(admission); // releases the concurrency slot (asynchronously)
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = command_stats(server);
    let mut d = delta(&before, &after);
    d.retain(|(name, _)| name != "info");
    let evalsha = d.iter().find(|(n, _)| n == "evalsha").map_or(0, |x| x.1);
    let total: u64 = d.iter().map(|x| x.1).sum();
    println!(
        "\n{n} admissions with 3 policies (sliding window + daily quota + concurrency): \
         cmdstat_evalsha +{evalsha} ({:.2} per admission); all commands: {d:?}",
        evalsha as f64 / n as f64
    );
    serde_json::json!({
        "admissions": n,
        "checks_per_admission": 3,
        "evalsha_calls": evalsha,
        "evalsha_per_admission": evalsha as f64 / n as f64,
        "all_commands": d.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
        "commands_per_admission": total as f64 / n as f64,
    })
}

fn main() {
    let full = common::full_run();
    let concurrencies: &[usize] = if full { &[1, 16, 64, 256] } else { &[1, 16] };
    let rounds = if full { 2 } else { 1 };
    let machine = common::machine();
    let server = RedisServer::new();
    let port = server.port();
    let version = server
        .cli(&["INFO", "server"])
        .lines()
        .find_map(|l| l.trim().strip_prefix("redis_version:").map(str::to_owned))
        .unwrap_or_default();
    let sha = server
        .cli(&["SCRIPT", "LOAD", include_str!("../src/store/admit.lua")])
        .trim()
        .to_owned();
    assert_eq!(sha.len(), 40, "SCRIPT LOAD answered {sha:?}");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store = rt
        .block_on(RedisStore::connect(server.url()))
        .expect("connect");
    let tenant: TenantId = "bench".parse().expect("id");
    let key = store.key(&tenant, &rate_check().algorithm, "api_calls");
    // Warm up (and check that our key is the one redis-benchmark uses).
    rt.block_on(ours(&store, 4, 2_000));
    assert_eq!(server.cli(&["EXISTS", &key]).trim(), "1", "{key}");

    let mut best: Vec<Run> = Vec::new();
    let mut keep = |run: Run| match best
        .iter_mut()
        .find(|b| b.client == run.client && b.concurrency == run.concurrency)
    {
        Some(b) if b.rps >= run.rps => {}
        Some(b) => *b = run,
        None => best.push(run),
    };
    let mut peer_missing = false;
    for _ in 0..rounds {
        for &c in concurrencies {
            let n: u64 = match (full, c) {
                (false, _) => 500,
                (true, 1) => 30_000,
                (true, _) => 100_000,
            };
            keep(rt.block_on(ours(&store, c, n)));
            keep(ceiling(port, &sha, &key, c, n));
            match peer(port, c, n) {
                Some(run) => keep(run),
                None => peer_missing = true,
            }
        }
    }
    let trips = rt.block_on(round_trips(
        &server,
        &store,
        if full { 10_000 } else { 100 },
    ));
    drop(store);
    drop(rt);

    best.sort_by_key(|r| (r.concurrency, r.client));
    println!(
        "\nredis-server {version} on 127.0.0.1:{port}; best of {rounds} (load {})",
        common::load_average()
    );
    println!("| concurrency | client | decisions/s | p50 ms | p99 ms | vs ceiling |");
    println!("|---:|---|---:|---:|---:|---:|");
    let ceiling_of = |c: usize| {
        best.iter()
            .find(|r| r.client == "redis-benchmark" && r.concurrency == c)
            .map_or(f64::NAN, |r| r.rps)
    };
    let mut rows = Vec::new();
    for r in &best {
        let share = r.rps / ceiling_of(r.concurrency);
        println!(
            "| {} | {} | {:.0} | {:.3} | {:.3} | {:.0}% |",
            r.concurrency,
            r.client,
            r.rps,
            r.p50_ms,
            r.p99_ms,
            share * 100.0
        );
        rows.push(vec![
            r.client.to_owned(),
            r.concurrency.to_string(),
            r.requests.to_string(),
            format!("{:.0}", r.rps),
            format!("{:.4}", r.p50_ms),
            format!("{:.4}", r.p99_ms),
            format!("{:.3}", share),
        ]);
    }
    if peer_missing {
        println!("rate-limiter-flexible: skipped (run `npm install` in benches/node)");
    }
    if !full {
        return;
    }
    common::write_result(
        "redis.csv",
        &common::csv(
            &[
                "client",
                "concurrency",
                "requests",
                "decisions_per_s",
                "p50_ms",
                "p99_ms",
                "share_of_ceiling",
            ],
            &rows,
        ),
    );
    let out = serde_json::json!({
        "machine": machine,
        "load_1m_at_end": common::load_average(),
        "redis_version": version,
        "script_sha": sha,
        "key": key,
        "rounds": rounds,
        "peer_missing": peer_missing,
        "runs": best.iter().map(|r| serde_json::json!({
            "client": r.client, "concurrency": r.concurrency, "requests": r.requests,
            "decisions_per_s": r.rps, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
            "share_of_ceiling": r.rps / ceiling_of(r.concurrency),
        })).collect::<Vec<_>>(),
        "round_trips": trips,
    });
    common::write_result(
        "redis.json",
        &serde_json::to_string_pretty(&out).expect("json"),
    );
}
