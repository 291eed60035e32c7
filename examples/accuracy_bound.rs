//! What it would take for a conservative sliding window to refuse less
//! (issue 12, "under ≤ 5 % on every trace"): plain models of window
//! layouts, replayed on the seven traces of `examples/accuracy.rs` and
//! judged as there (an exact log fed only what the model admitted; "over",
//! "under" as shares of all requests; "max/60s").
//!
//! ```text
//! cargo run --release --example accuracy_bound
//! ```
//!
//! Deterministic (no clock, no timing): every run prints the same table.
//! The models, all conservative (a unit counts at least as long as in the
//! exact log, so none is ever over):
//!
//! * `grid k`: the default's layout with `k` buckets of `ceil(W/k)` ms (the
//!   default is `k = 8`; the replay checks that this model decides exactly
//!   as `MemoryStore`'s `sliding_window` on every trace);
//! * `grid k, last-stamped`: the same buckets, each counted until its last
//!   admission + W (instead of its end + W);
//! * `on demand n/s`: at most `n` buckets, one opened at an admission more
//!   than `s` ms after the first of the newest bucket, each counted until
//!   its last admission + W (when full, the two oldest merge);
//! * `log, times rounded up to r ms`: the exact log with coarser
//!   timestamps — a lower bound on what any layout holding one time per
//!   unit at that resolution reaches.

#[path = "accuracy.rs"]
#[allow(dead_code)]
mod accuracy;

use std::collections::VecDeque;

use accuracy::{pct, traces, LIMIT, T0, WINDOW_MS};

const W: u64 = WINDOW_MS;

/// A limiter model: admits (and records) a request at `now`, or refuses.
trait Model {
    fn admit(&mut self, now: u64) -> bool;
}

/// Fixed buckets of `ceil(W/k)` ms; `last`: counted until the bucket's last
/// admission + W rather than its end + W.
struct Grid {
    b: u64,
    last: bool,
    /// (bucket index, count, last admission)
    buckets: VecDeque<(u64, u64, u64)>,
}

impl Grid {
    fn new(k: u64, last: bool) -> Self {
        Self {
            b: W.div_ceil(k),
            last,
            buckets: VecDeque::new(),
        }
    }
}

impl Model for Grid {
    fn admit(&mut self, now: u64) -> bool {
        let (b, last) = (self.b, self.last);
        // Counted while `now < end + W` (end = (j+1)·b, exclusive), or
        // `now < last + W`.
        self.buckets.retain(|&(j, _, l)| {
            let until = if last { l + W } else { (j + 1) * b + W - 1 };
            now < until
        });
        let used: u64 = self.buckets.iter().map(|e| e.1).sum();
        if used + 1 > LIMIT {
            return false;
        }
        let j = now / b;
        match self.buckets.back_mut() {
            Some(e) if e.0 == j => {
                e.1 += 1;
                e.2 = now;
            }
            _ => self.buckets.push_back((j, 1, now)),
        }
        true
    }
}

/// At most `n` buckets opened on demand, `span` ms wide, last-stamped.
struct OnDemand {
    n: usize,
    span: u64,
    /// (count, first, last)
    buckets: VecDeque<(u64, u64, u64)>,
}

impl Model for OnDemand {
    fn admit(&mut self, now: u64) -> bool {
        self.buckets.retain(|&(_, _, l)| now < l + W);
        let used: u64 = self.buckets.iter().map(|e| e.0).sum();
        if used + 1 > LIMIT {
            return false;
        }
        match self.buckets.back_mut() {
            Some(e) if now - e.1 < self.span => {
                e.0 += 1;
                e.2 = now;
            }
            _ => {
                if self.buckets.len() == self.n {
                    let (a, b) = (self.buckets[0], self.buckets[1]);
                    self.buckets.pop_front();
                    self.buckets[0] = (a.0 + b.0, a.1, b.2);
                }
                self.buckets.push_back((1, now, now));
            }
        }
        true
    }
}

/// The exact log with timestamps rounded up to `r` ms.
struct RoundedLog {
    r: u64,
    times: VecDeque<u64>,
}

impl Model for RoundedLog {
    fn admit(&mut self, now: u64) -> bool {
        while self.times.front().is_some_and(|&t| t + W <= now) {
            self.times.pop_front();
        }
        if self.times.len() as u64 >= LIMIT {
            return false;
        }
        self.times.push_back(now.div_ceil(self.r) * self.r);
        true
    }
}

/// (admitted, over, under, max/60s) of `model` on `arrivals`.
fn judge(arrivals: &[u64], model: &mut dyn Model) -> (u64, u64, u64, u64) {
    let mut log = VecDeque::new();
    let (mut admitted, mut over, mut under, mut max) = (0, 0, 0, 0);
    for &t in arrivals {
        let now = T0 + t;
        while log.front().is_some_and(|&x: &u64| x + W <= now) {
            log.pop_front();
        }
        let fits = (log.len() as u64) < LIMIT;
        if model.admit(now) {
            admitted += 1;
            over += u64::from(!fits);
            log.push_back(now);
            max = max.max(log.len() as u64);
        } else {
            under += u64::from(fits);
        }
    }
    (admitted, over, under, max)
}

fn main() {
    let traces = traces();
    // The model of the default decides as the store does.
    for (name, arrivals) in &traces {
        let store = accuracy::replay(arrivals);
        let model = judge(arrivals, &mut Grid::new(8, false));
        assert_eq!(
            (
                store.window_admits,
                store.over,
                store.under,
                store.max_per_window
            ),
            model,
            "{name}: the grid-8 model and MemoryStore's sliding_window differ"
        );
    }
    println!(
        "limit {LIMIT} per {} s, 1 h per trace; over / under as shares of all requests\n",
        W / 1000
    );
    print!("| model | state per key |");
    for (name, _) in &traces {
        print!(" {name} |");
    }
    println!(" worst under |");
    println!("|---|---|{}---:|", "---:|".repeat(traces.len()));
    type Make = Box<dyn Fn() -> Box<dyn Model>>;
    let models: Vec<(String, &str, Make)> = vec![
        (
            "grid 8 (the default)".into(),
            "9 counts",
            Box::new(|| Box::new(Grid::new(8, false))),
        ),
        (
            "grid 16".into(),
            "17 counts",
            Box::new(|| Box::new(Grid::new(16, false))),
        ),
        (
            "grid 32".into(),
            "33 counts",
            Box::new(|| Box::new(Grid::new(32, false))),
        ),
        (
            "grid 60".into(),
            "61 counts",
            Box::new(|| Box::new(Grid::new(60, false))),
        ),
        (
            "grid 8, last-stamped".into(),
            "9 × (count, time)",
            Box::new(|| Box::new(Grid::new(8, true))),
        ),
        (
            "on demand 8 / 7.5 s".into(),
            "8 × (count, 2 times)",
            Box::new(|| {
                Box::new(OnDemand {
                    n: 8,
                    span: 7_500,
                    buckets: VecDeque::new(),
                })
            }),
        ),
        (
            "on demand 16 / 3.75 s".into(),
            "16 × (count, 2 times)",
            Box::new(|| {
                Box::new(OnDemand {
                    n: 16,
                    span: 3_750,
                    buckets: VecDeque::new(),
                })
            }),
        ),
    ];
    let mut models = models;
    for r in [1_000, 250, 100, 50] {
        models.push((
            format!("log, times rounded up to {r} ms"),
            "one time per unit (≤ 100)",
            Box::new(move || {
                Box::new(RoundedLog {
                    r,
                    times: VecDeque::new(),
                })
            }),
        ));
    }
    for (label, state, make) in &models {
        print!("| {label} | {state} |");
        let mut worst: f64 = 0.0;
        for (_, arrivals) in &traces {
            let (_, over, under, max) = judge(arrivals, &mut *make());
            let n = arrivals.len() as u64;
            assert_eq!(over, 0, "{label}: a conservative model is never over");
            assert!(max <= LIMIT);
            worst = worst.max(pct(under, n));
            print!(" {:.2}% |", pct(under, n));
        }
        println!(" {worst:.2}% |");
    }
}
