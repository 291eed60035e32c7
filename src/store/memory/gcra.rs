//! GCRA ([`Algorithm::Gcra`](crate::store::Algorithm::Gcra)), counted as
//! governor counts.
//!
//! # Formula
//!
//! In nanoseconds: the emission interval `T = ceil(W / limit)` (rounded up,
//! so the rate never exceeds `limit / W`), the capacity `C = T·B` for a burst
//! of `B` units (both at most 2⁵³ − 1, the exact range of the Redis store's
//! numbers), and per key the theoretical arrival time `tat` (`now` when the
//! key is missing). With `d = max(tat − now, 0)` (how far the bucket is from
//! full), a request of `n` units
//!
//! * is never admitted when `n > B` or `limit = 0` (`retry_after = None`);
//! * is admitted when `d + T·n ≤ C`, and then `tat' = now + d + T·n`;
//! * otherwise waits `d + T·n − C` (rounded up to the millisecond).
//!
//! The decision reports the bucket: `limit = B`, `remaining = floor((C −
//! d) / T)` (with `d` after consumption when admitted), `used = B −
//! remaining`, `reset = ceil(d)`: the time until the bucket is full again
//! (as governor's `remaining_burst_capacity` and tower_governor's
//! `x-ratelimit-limit` = burst).
//!
//! This is governor's `test_n_all_and_update` with `τ = T·(B − 1)`
//! (`t0 ≥ tat + T·(n − 1) − τ ⟺ d + T·n ≤ T·B`); a property test replays
//! random traces through both. There is no error relative to the algorithm:
//! GCRA is exact for what it defines (a steady rate with a burst), which is
//! not a sliding-window limit: after an idle period it admits `B` at once and
//! then one unit every `T`, so a window-long span may hold up to
//! `B + limit − 1` units.
//!
//! # Memory
//!
//! One `u64` per key (`tat` in ns since the epoch, until the year 2554).

use std::time::Duration;

use crate::store::{Check, Decision, Lease};

use super::Counter;

/// Ns per ms.
const NS: u64 = 1_000_000;
/// The largest interval or capacity (exact as a double in Lua).
pub(crate) const MAX_NS: u64 = (1 << 53) - 1;

/// The parameters of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Params {
    /// Emission interval `T` in ns (0: nothing is ever admitted).
    pub(crate) t: u64,
    /// Capacity `C = T·B` in ns.
    pub(crate) cap: u64,
    /// The burst `B` (at most 2⁵³ − 1).
    pub(crate) burst: u64,
}

impl Params {
    /// `T = ceil(W / limit)`, `C = T·B`, both clamped to 2⁵³ − 1; `W` in
    /// whole milliseconds, at least 1.
    pub(crate) fn new(window: Duration, limit: u64, burst: u64) -> Self {
        let burst = burst.min(MAX_NS);
        if limit == 0 || burst == 0 {
            return Self {
                t: 0,
                cap: 0,
                burst,
            };
        }
        let w = u128::from(super::window_ms(window).min(MAX_NS)) * u128::from(NS);
        let t = w.div_ceil(u128::from(limit)).min(u128::from(MAX_NS)) as u64;
        let cap = (u128::from(t) * u128::from(burst)).min(u128::from(MAX_NS)) as u64;
        Self { t, cap, burst }
    }
}

/// `ceil(ns / 1 ms)` in ms.
fn ceil_ms(ns: u64) -> Duration {
    Duration::from_millis(ns.div_ceil(NS))
}

/// The theoretical arrival time in ns since the epoch (0: none).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct GcraState(pub(super) u64);

impl GcraState {
    /// The bucket is full: the state is equivalent to none.
    pub(super) fn idle(&self, now: u64) -> bool {
        self.0 <= now.saturating_mul(NS)
    }

    /// `d = max(tat − now, 0)` in ns.
    fn debt(&self, now: u64) -> u64 {
        self.0.saturating_sub(now.saturating_mul(NS))
    }
}

/// The decision at debt `d` (before consumption).
fn decide(d: u64, p: Params, check: &Check) -> Decision {
    let n = check.cost;
    let remaining = p.cap.saturating_sub(d).checked_div(p.t).unwrap_or(0);
    let never = n > 0 && (p.t == 0 || n > p.burst);
    let need = u128::from(d) + u128::from(p.t) * u128::from(n);
    let allowed = !never && need <= u128::from(p.cap);
    let retry_after = (!allowed && !never)
        .then(|| ceil_ms(u64::try_from(need - u128::from(p.cap)).unwrap_or(u64::MAX)));
    Decision {
        allowed,
        limit: p.burst,
        used: p.burst.saturating_sub(remaining),
        remaining,
        reset: ceil_ms(d),
        retry_after,
    }
}

impl Counter for GcraState {
    type Ctx = Params;

    fn empty(_now: u64, _: Params) -> Self {
        Self(0)
    }

    fn normalize(&mut self, _now: u64, _: Params) {}

    fn eval(&self, now: u64, p: Params, check: &Check) -> Decision {
        decide(self.debt(now), p, check)
    }

    fn admitted(state: Option<&Self>, now: u64, p: Params, check: &Check, decision: &mut Decision) {
        let mut after = state.copied().unwrap_or_default();
        after.consume(now, p, check.cost);
        let later = decide(after.debt(now), p, check);
        decision.allowed = true;
        decision.retry_after = None;
        decision.used = later.used;
        decision.remaining = later.remaining;
        decision.reset = later.reset;
    }

    fn consume(&mut self, now: u64, p: Params, cost: u64) -> Option<Lease> {
        let d = self.debt(now);
        let debt = d.saturating_add(p.t.saturating_mul(cost));
        self.0 = now.saturating_mul(NS).saturating_add(debt);
        None
    }

    fn unconsume(&mut self, now: u64, p: Params, cost: u64) -> bool {
        // Admitted, so `d + T·cost <= C` did not saturate: `tat` goes back
        // to `now + d`, the same debt as before.
        self.0 = self.0.saturating_sub(p.t.saturating_mul(cost));
        self.idle(now)
    }
}
