//! Throughput of `MemoryStore::admit` with 1 and N threads (N = cores), on
//! many tenants and on one hot tenant (issue 7, item 2), next to governor's
//! keyed limiter (a `DashMap` of one GCRA `AtomicU64` per key) on the same
//! keys and its direct limiter (one `AtomicU64`: the lower bound of a shared
//! counter) in the same run (issue 11, goal 3).
//!
//! ```text
//! cargo bench --bench scaling
//! SCALING_ONLY=ours cargo bench --bench scaling   # only rows whose limiter name contains "ours"
//! ```
//!
//! One sliding-window check per call (limit never reached), the system
//! clock, the default shard count. "many": 100 000 tenants, all admitted
//! once before timing (so calls update existing counters), each thread
//! picking tenants at random (xorshift); "hot": every call on one tenant.
//! Each configuration runs `ROUNDS` times for `SECONDS` each, 1 and N
//! threads interleaved; the median is reported, in wall time and per CPU
//! time of the threads (`/proc/thread-self/stat`), which discounts the
//! cores other processes take on a shared machine. Writes
//! `target/bench-results/scaling.{csv,json}`.

#[path = "common/mod.rs"]
mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use governor::{Quota, RateLimiter};
use tower_tenancy::store::{Algorithm, Check, CounterStore, MemoryStore};
use tower_tenancy::TenantId;

/// A quota governor never reaches in a run: one cell per nanosecond, a
/// burst of `u32::MAX` (as the store's limit is never reached).
fn governor_quota() -> Quota {
    Quota::with_period(Duration::from_nanos(1))
        .expect("a non-zero period")
        .allow_burst(std::num::NonZeroU32::MAX)
}

fn admit(store: &MemoryStore, tenant: &TenantId, checks: &[Check]) {
    let admission = store
        .admit(tenant, checks)
        .try_take()
        .expect("the memory store answers at once")
        .expect("the memory store does not fail");
    assert!(admission.allowed());
    black_box(admission);
}

/// CPU time (user + system) of the calling thread, in clock ticks, from
/// `/proc/thread-self/stat` (0 where unavailable).
fn thread_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // The fields after the command name (which is in parentheses).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// One measurement: calls per second of wall time, and CPU ticks used.
struct Sample {
    rate: f64,
    calls: u64,
    cpu_ticks: u64,
}

/// Calls per second of `threads` threads for `duration`, each calling
/// `call` on random tenants of `tenants`, and the CPU time the threads used.
fn run<F: Fn(&TenantId) + Send + Sync + 'static>(
    call: &Arc<F>,
    tenants: &Arc<Vec<TenantId>>,
    threads: usize,
    duration: Duration,
) -> Sample {
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (call, tenants) = (call.clone(), tenants.clone());
            let (stop, barrier) = (stop.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut rng =
                    0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F);
                let n = tenants.len() as u64;
                let mut calls = 0u64;
                barrier.wait();
                let cpu_start = thread_cpu_ticks();
                while !stop.load(Ordering::Relaxed) {
                    // 64 calls between two looks at the flag.
                    for _ in 0..64 {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let tenant = &tenants[(rng % n) as usize];
                        call(tenant);
                    }
                    calls += 64;
                }
                (calls, thread_cpu_ticks() - cpu_start)
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let (mut calls, mut cpu_ticks) = (0, 0);
    for handle in handles {
        let (c, t) = handle.join().expect("thread");
        calls += c;
        cpu_ticks += t;
    }
    Sample {
        rate: calls as f64 / start.elapsed().as_secs_f64(),
        calls,
        cpu_ticks,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// What [`measure`] prints and writes.
#[derive(Default)]
struct Report {
    rows: Vec<Vec<String>>,
    json: Vec<serde_json::Value>,
}

/// Runs `call` on `tenants` with 1, N (= cores), 2, 8 and 16 threads,
/// `rounds` times interleaved, and prints one table row per thread count.
#[allow(clippy::too_many_arguments)]
fn measure<F: Fn(&TenantId) + Send + Sync + 'static>(
    report: &mut Report,
    limiter: &str,
    label: &str,
    call: F,
    tenants: &Arc<Vec<TenantId>>,
    thread_counts: &[usize],
    rounds: usize,
    duration: Duration,
) {
    if std::env::var("SCALING_ONLY").is_ok_and(|only| !limiter.contains(only.as_str())) {
        return;
    }
    let call = Arc::new(call);
    let mut samples: Vec<Vec<Sample>> = thread_counts.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (k, &threads) in thread_counts.iter().enumerate() {
            samples[k].push(run(&call, tenants, threads, duration));
        }
    }
    // Per thread count: the median wall rate, and the median CPU time per
    // call (clock ticks of 10 ms, /proc/thread-self/stat).
    let summary: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| {
            let rate = median(s.iter().map(|x| x.rate).collect());
            let cpu_ns = median(
                s.iter()
                    .map(|x| x.cpu_ticks as f64 * 1e7 / x.calls.max(1) as f64)
                    .collect(),
            );
            (rate, cpu_ns)
        })
        .collect();
    for (k, &threads) in thread_counts.iter().enumerate() {
        let (rate, cpu_ns) = summary[k];
        let speedup = rate / summary[0].0;
        // The wall speedup the threads would reach with their cores to
        // themselves: N x (CPU time per call with 1 thread / with N).
        let cpu_speedup = threads as f64 * summary[0].1 / cpu_ns;
        // CPU time per call with N threads / with 1 (goal 3 of issue 11:
        // at most 1.3 with 2 threads on one hot tenant).
        let cpu_ratio = cpu_ns / summary[0].1;
        // How much of the wall time the threads were on a CPU (less than
        // 100% when other processes share the cores).
        let share = rate * cpu_ns / 1e9 / threads as f64;
        println!(
            "| {limiter} | {label} | {threads} | {rate:.0} | {speedup:.2}x | {cpu_ns:.0} | {cpu_ratio:.2}x | {:.0}% | {cpu_speedup:.2}x |",
            share * 100.0
        );
        report.rows.push(vec![
            limiter.to_owned(),
            label.to_owned(),
            threads.to_string(),
            format!("{rate:.0}"),
            format!("{speedup:.3}"),
            format!("{cpu_ns:.1}"),
            format!("{cpu_ratio:.3}"),
            format!("{share:.3}"),
            format!("{cpu_speedup:.3}"),
        ]);
        report.json.push(serde_json::json!({
            "limiter": limiter, "tenants": label, "threads": threads, "calls_per_s": rate,
            "speedup_wall": speedup, "cpu_ns_per_call": cpu_ns, "cpu_ratio_to_1_thread": cpu_ratio,
            "cpu_share": share, "speedup_per_cpu_time": cpu_speedup,
        }));
    }
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
    // governor's keyed limiter (`DashMap`) on the same keys, and its direct
    // limiter (one `AtomicU64`, no map).
    let keyed = Arc::new(RateLimiter::keyed(governor_quota()));
    let direct = Arc::new(RateLimiter::direct(governor_quota()));
    for t in many_tenants.iter() {
        admit(&store, t, &checks);
        keyed.check_key(t).expect("under the quota");
    }
    let hot: Arc<Vec<TenantId>> = Arc::new(vec!["hot".parse().expect("valid id")]);
    let duration = Duration::from_secs_f64(seconds);
    // 1 and N (= cores) threads, then 2, 8 and 16 (more threads than
    // cores: the curve must not collapse).
    let mut thread_counts = vec![1, cores, 2, 8, 16];
    thread_counts.sort_unstable();
    thread_counts.dedup();

    let mut report = Report::default();
    // The locked path alone: one thread on a key of a fresh store never
    // finds the lock taken, so the key never becomes a hot window.
    let (cold_store, c) = (Arc::new(MemoryStore::new()), checks.clone());
    let cold = move |t: &TenantId| admit(&cold_store, t, &c);
    println!(
        "{cores} cores, {rounds} rounds of {seconds} s, median (load {})",
        common::load_average()
    );
    println!("| limiter | tenants | threads | calls/s (wall) | speedup (wall) | CPU ns per call | CPU per call / 1 thread | CPU share of the threads | speedup per CPU time |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    measure(
        &mut report,
        "ours (MemoryStore), locked path",
        "1 (one thread only)",
        cold,
        &hot,
        &[1],
        rounds,
        duration,
    );
    let many_label = format!("{many}");
    for (label, tenants) in [(many_label.as_str(), &many_tenants), ("1 (hot)", &hot)] {
        let (s, c) = (store.clone(), checks.clone());
        let ours = move |t: &TenantId| admit(&s, t, &c);
        measure(
            &mut report,
            "ours (MemoryStore)",
            label,
            ours,
            tenants,
            &thread_counts,
            rounds,
            duration,
        );
        let k = keyed.clone();
        let peer = move |t: &TenantId| {
            black_box(k.check_key(t)).expect("under the quota");
        };
        measure(
            &mut report,
            "governor keyed",
            label,
            peer,
            tenants,
            &thread_counts,
            rounds,
            duration,
        );
    }
    let d = direct.clone();
    let lower_bound = move |_: &TenantId| {
        black_box(d.check()).expect("under the quota");
    };
    measure(
        &mut report,
        "governor direct",
        "1 (no key)",
        lower_bound,
        &hot,
        &thread_counts,
        rounds,
        duration,
    );
    if !full {
        return;
    }
    common::write_result(
        "scaling.csv",
        &common::csv(
            &[
                "limiter",
                "tenants",
                "threads",
                "calls_per_s",
                "speedup_wall",
                "cpu_ns_per_call",
                "cpu_ratio_to_1_thread",
                "cpu_share",
                "speedup_per_cpu_time",
            ],
            &report.rows,
        ),
    );
    let out = serde_json::json!({
        "machine": machine,
        "load_1m_at_end": common::load_average(),
        "seconds_per_round": seconds,
        "rounds": rounds,
        "results": report.json,
    });
    common::write_result(
        "scaling.json",
        &serde_json::to_string_pretty(&out).expect("json"),
    );
}
