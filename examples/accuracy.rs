//! How often each rate algorithm (sub-bucket sliding window, two-counter
//! window, GCRA, sliding log) decides differently from the exact sliding log.
//!
//! ```text
//! cargo run --release --example accuracy
//! ```
//!
//! `benches/accuracy.rs` reuses this file (the same traces and replay) for
//! `scripts/bench.sh`, and checks the exact algorithms against brute force.
//!
//! Deterministic (a fixed-seed xorshift PRNG and a `ManualClock`; no timing):
//! every run prints the same table. Limit 100 per 60 s window, one hour of
//! simulated time per trace, cost 1 per request. Two comparisons, the log's
//! decision being the truth:
//!
//! * **independent**: a window store and a log store see the same arrivals,
//!   each with its own state. `wrong +` = the window admits what the log
//!   rejects, `wrong -` = the other way round, as shares of all requests.
//!   After the first disagreement the two states differ, so this compares
//!   two limiters as a client experiences them.
//! * **shadow**: an exact log is fed only what the window admitted and judges
//!   each request against that same history. `over` = the window admitted a
//!   request although its own last 60 s already held 100 (the limit was
//!   really exceeded); `under` = it rejected one that would have fit.
//!   `max/60s` is the most requests the window admitted in any 60 s span.

use std::sync::Arc;
use std::time::Duration;

use tower_tenancy::store::{Algorithm, Check, Clock, CounterStore, ManualClock};
use tower_tenancy::{MemoryStore, TenantId};

pub const LIMIT: u64 = 100;
pub const WINDOW_MS: u64 = 60_000;
pub const HOUR_MS: u64 = 3_600_000;
/// 2026-11-23T00:00:00Z.
pub const T0: u64 = 1_795_392_000_000;

/// xorshift64*: a tiny deterministic PRNG.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in (0, 1].
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Exponential with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -self.unit().ln() * mean
    }

    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }
}

/// Poisson arrivals at `per_minute` on average, for one hour.
pub fn steady(seed: u64, per_minute: f64) -> Vec<u64> {
    let mut rng = Rng(seed);
    let mean_gap = 60_000.0 / per_minute;
    let mut t = 0.0;
    let mut arrivals = Vec::new();
    loop {
        t += rng.exp(mean_gap);
        if t >= HOUR_MS as f64 {
            return arrivals;
        }
        arrivals.push(t as u64);
    }
}

/// Bursts of `size` requests (uniform in the range) spread over `spread_ms`,
/// starting at Poisson times `mean_gap_ms` apart on average.
pub fn bursty(seed: u64, size: (u64, u64), spread_ms: u64, mean_gap_ms: f64) -> Vec<u64> {
    let mut rng = Rng(seed);
    let mut start = 0.0;
    let mut arrivals = Vec::new();
    loop {
        start += rng.exp(mean_gap_ms);
        if start >= HOUR_MS as f64 {
            break;
        }
        for _ in 0..rng.range(size.0, size.1) {
            let t = start as u64 + rng.range(0, spread_ms);
            if t < HOUR_MS {
                arrivals.push(t);
            }
        }
    }
    arrivals.sort_unstable();
    arrivals
}

/// The comparison of one trace.
#[derive(Default)]
pub struct Tally {
    pub requests: u64,
    pub log_admits: u64,
    pub window_admits: u64,
    pub wrongly_admitted: u64,
    pub wrongly_rejected: u64,
    pub over: u64,
    pub under: u64,
    pub max_per_window: u64,
}

/// The rate algorithms compared, with the window of the traces.
pub fn algorithms() -> Vec<(&'static str, Algorithm)> {
    let window = Duration::from_millis(WINDOW_MS);
    vec![
        ("sliding_window", Algorithm::SlidingWindow { window }),
        (
            "sliding_window_approx",
            Algorithm::SlidingWindowApprox { window },
        ),
        (
            "gcra (burst = limit)",
            Algorithm::Gcra {
                window,
                burst: LIMIT,
            },
        ),
        ("sliding_log", Algorithm::SlidingLog { window }),
    ]
}

/// The sub-bucket sliding window (the default) on `arrivals`.
pub fn replay(arrivals: &[u64]) -> Tally {
    replay_with(arrivals, algorithms()[0].1)
}

/// `algorithm` on `arrivals` against the exact sliding log.
pub fn replay_with(arrivals: &[u64], algorithm: Algorithm) -> Tally {
    let clock = Arc::new(ManualClock::new(T0));
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let window_store = MemoryStore::with_clock(dyn_clock.clone());
    let log_store = MemoryStore::with_clock(dyn_clock.clone());
    let shadow_store = MemoryStore::with_clock(dyn_clock);
    let tenant: TenantId = "acme".parse().expect("valid id");
    let window = Duration::from_millis(WINDOW_MS);
    let window_check = [Check::new("calls", algorithm, LIMIT, 1)];
    let log_check = [Check::new(
        "calls",
        Algorithm::SlidingLog { window },
        LIMIT,
        1,
    )];
    let record = [Check::new(
        "calls",
        Algorithm::SlidingLog { window },
        u64::MAX,
        1,
    )];

    let admit = |store: &MemoryStore, checks: &[Check]| {
        store
            .admit(&tenant, checks)
            .try_take()
            .expect("the memory store answers at once")
            .expect("the memory store does not fail")
    };

    let mut tally = Tally::default();
    for &t in arrivals {
        clock.set_ms(T0 + t);
        let by_window = admit(&window_store, &window_check).allowed();
        let by_log = admit(&log_store, &log_check).allowed();
        let exact = shadow_store
            .peek(&tenant, &log_check)
            .try_take()
            .expect("ready")
            .expect("ok")[0]
            .allowed;
        tally.requests += 1;
        tally.window_admits += u64::from(by_window);
        tally.log_admits += u64::from(by_log);
        tally.wrongly_admitted += u64::from(by_window && !by_log);
        tally.wrongly_rejected += u64::from(!by_window && by_log);
        tally.over += u64::from(by_window && !exact);
        tally.under += u64::from(!by_window && exact);
        if by_window {
            let recorded = admit(&shadow_store, &record);
            tally.max_per_window = tally.max_per_window.max(recorded.decisions[0].used);
        }
    }
    tally
}

pub fn pct(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        100.0 * n as f64 / of as f64
    }
}

/// The traces: arrival times in ms from `T0`, sorted.
pub fn traces() -> Vec<(&'static str, Vec<u64>)> {
    vec![
        ("steady 0.8x", steady(1, 80.0)),
        ("steady 1.0x", steady(2, 100.0)),
        ("steady 1.5x", steady(3, 150.0)),
        ("steady 3x", steady(4, 300.0)),
        ("bursty 0.9x", bursty(5, (30, 90), 2_000, 40_000.0)),
        ("bursty 2x", bursty(6, (50, 150), 5_000, 30_000.0)),
        ("bursty 5x", bursty(7, (200, 300), 1_000, 30_000.0)),
    ]
}

fn main() {
    let traces = traces();
    println!(
        "limit {LIMIT} per {} s, 1 h per trace; shares of all requests\n",
        WINDOW_MS / 1000
    );
    println!(
        "| algorithm | trace | requests | log admits | admits | wrong + | wrong - | over | under | max/60s |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (algorithm_name, algorithm) in algorithms() {
        for (name, arrivals) in &traces {
            let t = replay_with(arrivals, algorithm);
            println!(
                "| {algorithm_name} | {name} | {} | {} | {} | {:.2}% | {:.2}% | {:.2}% | {:.2}% | {} |",
                t.requests,
                t.log_admits,
                t.window_admits,
                pct(t.wrongly_admitted, t.requests),
                pct(t.wrongly_rejected, t.requests),
                pct(t.over, t.requests),
                pct(t.under, t.requests),
                t.max_per_window,
            );
        }
    }
}
