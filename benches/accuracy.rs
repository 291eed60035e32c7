//! Accuracy and cost of every rate algorithm against the exact sliding log
//! (issue 12), and of the exact algorithms (sliding log, calendar quotas)
//! against brute force (issue 7, item 5).
//!
//! ```text
//! cargo bench --features redis --bench accuracy
//! ```
//!
//! The traces and the replay are those of `examples/accuracy.rs` (included
//! below): deterministic, the figures do not depend on the machine. One
//! table, every algorithm × seven traces: `over` / `under` / `max/60s` as
//! defined there; `B/key`: heap bytes per key in a `MemoryStore` holding
//! 10⁶ keys of that algorithm (one admission each; a counting allocator,
//! the tenant ids created beforehand); `Redis µs`: with the `redis` feature,
//! the trace replayed through a `RedisStore` on a `redis-server` of its own
//! (test clock), `usec / calls` of `EVALSHA` in `INFO commandstats` (time
//! inside Redis per decision, without the network). Then:
//!
//! * the `MemoryStore` sliding log replays every trace and is compared,
//!   request by request, with a brute-force log (a list of admitted
//!   timestamps, counted anew for every request);
//! * the calendar quotas (hour, day, week, month) replay a 75-day trace
//!   that crosses months and a year end and are compared with brute-force
//!   counts per period, the period found by walking the calendar day by day
//!   from 1970 (independent of the store's date arithmetic).
//!
//! Writes `target/bench-results/accuracy.{csv,json}`.

#[path = "common/mod.rs"]
mod common;

#[path = "../examples/accuracy.rs"]
#[allow(dead_code)]
mod example;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use example::{Rng, LIMIT, T0, WINDOW_MS};

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

#[cfg(feature = "redis")]
#[path = "../tests/common/redis_server.rs"]
mod redis_server;

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static CURRENT: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to `System` with the same arguments.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            CURRENT.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            CURRENT.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            CURRENT.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes per key of `algorithm` in a store holding `keys` keys.
fn bytes_per_key(algorithm: Algorithm, keys: usize) -> f64 {
    let tenants: Vec<TenantId> = (0..keys)
        .map(|i| format!("tenant-{i}").parse().expect("id"))
        .collect();
    let clock = Arc::new(ManualClock::new(T0));
    let before = CURRENT.load(Ordering::Relaxed);
    let store = MemoryStore::with_clock(clock as Arc<dyn Clock>);
    let check = Check::new("calls", algorithm, LIMIT, 1);
    for tenant in &tenants {
        assert!(admit(&store, tenant, &check));
    }
    let grown = CURRENT.load(Ordering::Relaxed) - before;
    assert_eq!(store.len(), keys);
    drop(store);
    grown as f64 / keys as f64
}

/// Time inside Redis per decision: the trace through a `RedisStore` (test
/// clock), `usec / calls` of `EVALSHA`.
#[cfg(feature = "redis")]
fn redis_usec(
    server: &redis_server::RedisServer,
    runtime: &tokio::runtime::Runtime,
    algorithm: Algorithm,
    arrivals: &[u64],
    tenant: &str,
) -> f64 {
    use tower_tenancy::store::RedisStore;
    let clock = Arc::new(ManualClock::new(T0));
    let store = runtime
        .block_on(RedisStore::connect(server.url()))
        .expect("connect")
        .clock(clock.clone());
    let tenant: TenantId = tenant.parse().expect("id");
    let check = [Check::new("calls", algorithm, LIMIT, 1)];
    // The script loaded (the first EVALSHA answers NOSCRIPT) before counting.
    let warm: TenantId = "warm-up".parse().expect("id");
    runtime.block_on(store.admit(&warm, &check)).expect("admit");
    server.cli(&["CONFIG", "RESETSTAT"]);
    runtime.block_on(async {
        for &t in arrivals {
            clock.set_ms(T0 + t);
            store.admit(&tenant, &check).await.expect("admit");
        }
    });
    let stats = server.cli(&["INFO", "commandstats"]);
    let line = stats
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .expect("evalsha stats");
    let field = |name: &str| -> f64 {
        line.split([':', ','])
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .expect("field")
    };
    assert_eq!(field("calls") as usize, arrivals.len());
    field("usec") / field("calls")
}
use tower_tenancy::store::{Algorithm, Check, Clock, CounterStore, ManualClock};
use tower_tenancy::{MemoryStore, Period, TenantId};

fn admit(store: &MemoryStore, tenant: &TenantId, check: &Check) -> bool {
    store
        .admit(tenant, std::slice::from_ref(check))
        .try_take()
        .expect("ready")
        .expect("ok")
        .allowed()
}

/// Requests where the store's sliding log and a brute-force log disagree.
fn log_vs_brute_force(arrivals: &[u64]) -> u64 {
    let clock = Arc::new(ManualClock::new(T0));
    let store = MemoryStore::with_clock(clock.clone() as Arc<dyn Clock>);
    let tenant: TenantId = "acme".parse().expect("id");
    let check = Check::new(
        "calls",
        Algorithm::SlidingLog {
            window: Duration::from_millis(WINDOW_MS),
        },
        LIMIT,
        1,
    );
    let mut admitted: Vec<u64> = Vec::new();
    let mut mismatches = 0;
    for &t in arrivals {
        let now = T0 + t;
        clock.set_ms(now);
        let by_store = admit(&store, &tenant, &check);
        let in_window = admitted.iter().filter(|&&a| a + WINDOW_MS > now).count() as u64;
        let by_reference = in_window < LIMIT;
        if by_reference {
            admitted.push(now);
        }
        mismatches += u64::from(by_store != by_reference);
    }
    mismatches
}

/// (year, month) of day `days` since 1970-01-01, by walking month by month.
fn year_month_walk(days: u64) -> (u64, u64) {
    let leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let (mut y, mut m, mut left) = (1970, 1, days);
    loop {
        let len = match m {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            _ if leap(y) => 29,
            _ => 28,
        };
        if left < len {
            return (y, m);
        }
        left -= len;
        m += 1;
        if m == 13 {
            m = 1;
            y += 1;
        }
    }
}

/// The brute-force period key of `now`.
fn period_key(period: Period, now: u64) -> u64 {
    let day = now / 86_400_000;
    match period {
        Period::Hour => now / 3_600_000,
        Period::Day => day,
        // Monday-based weeks; 1970-01-01 was a Thursday.
        Period::Week => (day + 3) / 7,
        Period::Month => {
            let (y, m) = year_month_walk(day);
            y * 12 + m
        }
    }
}

/// A 75-day trace from 2026-11-23: Poisson arrivals about every 10 minutes
/// with bursts of 5 to 40 requests about twice a day.
fn calendar_trace() -> Vec<u64> {
    let mut rng = Rng(99);
    let end = 75 * 86_400_000u64;
    let mut arrivals = Vec::new();
    let mut t = 0.0;
    while (t as u64) < end {
        t += rng.exp(600_000.0);
        arrivals.push(t as u64);
        if rng.range(0, 72) == 0 {
            for _ in 0..rng.range(5, 40) {
                arrivals.push(t as u64 + rng.range(0, 60_000));
            }
        }
    }
    arrivals.retain(|&a| a < end);
    arrivals.sort_unstable();
    arrivals
}

/// Requests where the store's calendar quota and brute-force counts per
/// period disagree; also returns how many requests each denied.
fn calendar_vs_brute_force(arrivals: &[u64], period: Period, limit: u64) -> (u64, u64) {
    let clock = Arc::new(ManualClock::new(T0));
    let store = MemoryStore::with_clock(clock.clone() as Arc<dyn Clock>);
    let tenant: TenantId = "acme".parse().expect("id");
    let check = Check::new("quota", Algorithm::Calendar { period }, limit, 1);
    let mut counts: HashMap<u64, u64> = HashMap::new();
    let mut month_cache: VecDeque<(u64, u64)> = VecDeque::new();
    let (mut mismatches, mut denied) = (0, 0);
    for &t in arrivals {
        let now = T0 + t;
        clock.set_ms(now);
        let by_store = admit(&store, &tenant, &check);
        let key = if period == Period::Month {
            let day = now / 86_400_000;
            match month_cache.iter().find(|(d, _)| *d == day) {
                Some(&(_, k)) => k,
                None => {
                    let k = period_key(period, now);
                    month_cache.push_back((day, k));
                    k
                }
            }
        } else {
            period_key(period, now)
        };
        let count = counts.entry(key).or_default();
        let by_reference = *count < limit;
        if by_reference {
            *count += 1;
        } else {
            denied += 1;
        }
        mismatches += u64::from(by_store != by_reference);
    }
    (mismatches, denied)
}

fn main() {
    let full = common::full_run();
    let traces = example::traces();
    let keys = if full { 1_000_000 } else { 20_000 };
    #[cfg(feature = "redis")]
    let (server, runtime) = (
        redis_server::RedisServer::new(),
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime"),
    );
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    println!("limit {LIMIT} per 60 s, 1 h per trace; over/under: shares of all requests; B/key at {keys} keys");
    println!(
        "| algorithm | trace | requests | admitted | over | under | max/60s | B/key | Redis µs |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (a, (algorithm_name, algorithm)) in example::algorithms().into_iter().enumerate() {
        let bytes = bytes_per_key(algorithm, keys);
        for (i, (name, arrivals)) in traces.iter().enumerate() {
            let arrivals = if full {
                &arrivals[..]
            } else {
                &arrivals[..arrivals.len().min(500)]
            };
            let t = example::replay_with(arrivals, algorithm);
            #[cfg(feature = "redis")]
            let usec = Some(redis_usec(
                &server,
                &runtime,
                algorithm,
                arrivals,
                &format!("t{a}-{i}"),
            ));
            #[cfg(not(feature = "redis"))]
            let usec: Option<f64> = {
                let _ = (a, i);
                None
            };
            let cells = vec![
                algorithm_name.to_string(),
                name.to_string(),
                t.requests.to_string(),
                t.window_admits.to_string(),
                format!("{:.2}%", example::pct(t.over, t.requests)),
                format!("{:.2}%", example::pct(t.under, t.requests)),
                t.max_per_window.to_string(),
                format!("{bytes:.1}"),
                usec.map_or("—".to_owned(), |u| format!("{u:.2}")),
            ];
            println!("{}", common::md_row(&cells));
            if matches!(
                algorithm,
                Algorithm::SlidingWindow { .. } | Algorithm::SlidingLog { .. }
            ) {
                assert!(
                    t.max_per_window <= LIMIT,
                    "{algorithm_name} over the limit on {name}"
                );
                assert_eq!(
                    t.over, 0,
                    "{algorithm_name} admitted over the limit on {name}"
                );
            }
            rows.push(
                cells
                    .iter()
                    .map(|c| c.trim_end_matches('%').to_owned())
                    .collect(),
            );
            json_rows.push(serde_json::json!({
                "algorithm": algorithm_name,
                "trace": name,
                "requests": t.requests,
                "admitted": t.window_admits,
                "log_admits": t.log_admits,
                "over_pct": example::pct(t.over, t.requests),
                "under_pct": example::pct(t.under, t.requests),
                "max_per_60s": t.max_per_window,
                "bytes_per_key": bytes,
                "keys": keys,
                "redis_usec_per_decision": usec,
            }));
        }
    }
    println!("\nthe MemoryStore sliding log against brute force:");
    println!("| trace | mismatches |");
    println!("|---|---:|");
    let mut json_log = Vec::new();
    for (name, arrivals) in &traces {
        let arrivals = if full {
            &arrivals[..]
        } else {
            &arrivals[..arrivals.len().min(500)]
        };
        let log_mismatches = log_vs_brute_force(arrivals);
        println!("| {name} | {log_mismatches} |");
        assert_eq!(log_mismatches, 0, "the sliding log must be exact");
        json_log.push(serde_json::json!({"trace": name, "mismatches": log_mismatches}));
    }

    let trace = calendar_trace();
    let trace = if full {
        &trace[..]
    } else {
        &trace[..trace.len().min(500)]
    };
    let mut json_calendar = Vec::new();
    println!(
        "\ncalendar quotas vs brute force, {} requests over 75 days from 2026-11-23",
        trace.len()
    );
    println!("| period | limit | denied | mismatches |");
    println!("|---|---:|---:|---:|");
    for (period, limit) in [
        (Period::Hour, 8),
        (Period::Day, 120),
        (Period::Week, 800),
        (Period::Month, 3_000),
    ] {
        let (mismatches, denied) = calendar_vs_brute_force(trace, period, limit);
        println!("| {period:?} | {limit} | {denied} | {mismatches} |");
        assert_eq!(mismatches, 0, "calendar quotas must be exact");
        json_calendar.push(serde_json::json!({
            "period": format!("{period:?}"), "limit": limit,
            "requests": trace.len(), "denied": denied, "mismatches": mismatches,
        }));
    }
    if !full {
        return;
    }
    common::write_result(
        "accuracy.csv",
        &common::csv(
            &[
                "algorithm",
                "trace",
                "requests",
                "admitted",
                "over_pct",
                "under_pct",
                "max_per_60s",
                "bytes_per_key",
                "redis_usec_per_decision",
            ],
            &rows,
        ),
    );
    let out = serde_json::json!({
        "limit": LIMIT, "window_ms": WINDOW_MS,
        "machine": common::machine(),
        "rows": json_rows,
        "log_vs_brute_force": json_log,
        "calendar": json_calendar,
    });
    common::write_result(
        "accuracy.json",
        &serde_json::to_string_pretty(&out).expect("json"),
    );
}
