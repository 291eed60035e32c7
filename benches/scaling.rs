//! Throughput of `MemoryStore::admit` with 1 and N threads (N = cores), on
//! many tenants and on one hot tenant (issue 7, item 2).
//!
//! ```text
//! cargo bench --bench scaling
//! ```
//!
//! One sliding-window check per call (limit never reached), the system
//! clock, the default shard count. "many": 100 000 tenants, all admitted
//! once before timing (so calls update existing counters), each thread
//! picking tenants at random (xorshift); "hot": every call on one tenant.
//! Each configuration runs `ROUNDS` times for `SECONDS` each, 1 and N
//! threads interleaved; the median is reported. Writes
//! `target/bench-results/scaling.{csv,json}`.

#[path = "common/mod.rs"]
mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use tower_tenancy::store::{Algorithm, Check, CounterStore, MemoryStore};
use tower_tenancy::TenantId;

fn admit(store: &MemoryStore, tenant: &TenantId, checks: &[Check]) {
    let admission = store
        .admit(tenant, checks)
        .try_take()
        .expect("the memory store answers at once")
        .expect("the memory store does not fail");
    assert!(admission.allowed());
    black_box(admission);
}

/// Calls per second of `threads` threads for `duration`, each on random
/// tenants of `tenants`.
fn run(
    store: &Arc<MemoryStore>,
    tenants: &Arc<Vec<TenantId>>,
    checks: &Arc<[Check]>,
    threads: usize,
    duration: Duration,
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (store, tenants, checks) = (store.clone(), tenants.clone(), checks.clone());
            let (stop, barrier) = (stop.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut rng =
                    0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F);
                let n = tenants.len() as u64;
                let mut calls = 0u64;
                barrier.wait();
                while !stop.load(Ordering::Relaxed) {
                    // 64 calls between two looks at the flag.
                    for _ in 0..64 {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let tenant = &tenants[(rng % n) as usize];
                        admit(&store, tenant, &checks);
                    }
                    calls += 64;
                }
                calls
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let calls: u64 = handles.into_iter().map(|h| h.join().expect("thread")).sum();
    calls as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let full = common::full_run();
    let (seconds, rounds, many) = if full {
        (2.0, 5, 100_000)
    } else {
        (0.05, 1, 1_000)
    };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let machine = common::machine();
    let store = Arc::new(MemoryStore::new());
    let checks: Arc<[Check]> = Arc::new([Check::new(
        "api_calls",
        Algorithm::SlidingWindow {
            window: Duration::from_secs(60),
        },
        u64::MAX / 2,
        1,
    )]);
    let many_tenants: Arc<Vec<TenantId>> = Arc::new(
        (0..many)
            .map(|i| format!("tenant-{i}").parse().expect("valid id"))
            .collect(),
    );
    for t in many_tenants.iter() {
        admit(&store, t, &checks);
    }
    let hot: Arc<Vec<TenantId>> = Arc::new(vec!["hot".parse().expect("valid id")]);
    let duration = Duration::from_secs_f64(seconds);

    let mut rows = Vec::new();
    let mut json = Vec::new();
    println!(
        "MemoryStore::admit, {cores} cores, {rounds} rounds of {seconds} s, median (load {})",
        common::load_average()
    );
    println!("| tenants | threads | calls/s | ns/call per thread | speedup vs 1 thread |");
    println!("|---|---:|---:|---:|---:|");
    for (label, tenants) in [(format!("{many}"), &many_tenants), ("1 (hot)".into(), &hot)] {
        let thread_counts = [1, cores];
        let mut samples = vec![Vec::new(); thread_counts.len()];
        for _ in 0..rounds {
            for (k, &threads) in thread_counts.iter().enumerate() {
                samples[k].push(run(&store, tenants, &checks, threads, duration));
            }
        }
        let medians: Vec<f64> = samples.into_iter().map(median).collect();
        for (k, &threads) in thread_counts.iter().enumerate() {
            let rate = medians[k];
            let speedup = rate / medians[0];
            let ns = 1e9 / rate * threads as f64;
            println!("| {label} | {threads} | {rate:.0} | {ns:.1} | {speedup:.2}x |");
            rows.push(vec![
                label.clone(),
                threads.to_string(),
                format!("{rate:.0}"),
                format!("{ns:.1}"),
                format!("{speedup:.3}"),
            ]);
            json.push(serde_json::json!({
                "tenants": label, "threads": threads, "calls_per_s": rate,
                "ns_per_call_per_thread": ns, "speedup": speedup,
            }));
        }
    }
    if !full {
        return;
    }
    common::write_result(
        "scaling.csv",
        &common::csv(
            &[
                "tenants",
                "threads",
                "calls_per_s",
                "ns_per_call_per_thread",
                "speedup",
            ],
            &rows,
        ),
    );
    let out = serde_json::json!({
        "machine": machine,
        "load_1m_at_end": common::load_average(),
        "seconds_per_round": seconds,
        "rounds": rounds,
        "results": json,
    });
    common::write_result(
        "scaling.json",
        &serde_json::to_string_pretty(&out).expect("json"),
    );
}
