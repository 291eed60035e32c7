//! The two-counter sliding window ([`Algorithm::SlidingWindowApprox`](crate::store::Algorithm::SlidingWindowApprox)).
//!
//! `used = curr + floor(prev × (W − elapsed) / W)`: the previous fixed
//! window's count weighted by its overlap with the sliding window, as if its
//! requests had been spread evenly over it. The error is unbounded in both
//! directions relative to the exact log: a burst at the end of one fixed
//! window fades too early (up to `2 × limit` admitted in one window-long
//! span: measured 184 for a limit of 100 on the bursty traces of
//! `benches/accuracy.rs`), a burst at its start weighs after it has left the
//! true window. Kept for its 3-integer state; see BENCHMARKS.md §5.

use super::{decision, Counter};
use crate::store::{Check, Decision, Lease};

/// Sliding window counter: the counts of the current fixed window (starting
/// at `start`, a multiple of the window) and of the one before.
pub(super) struct ApproxState {
    start: u64,
    curr: u64,
    prev: u64,
}

impl ApproxState {
    /// Both windows are over: the state counts nothing any more.
    pub(super) fn idle(&self, now: u64, longest_window: u64) -> bool {
        now >= self.start.saturating_add(longest_window.saturating_mul(2))
            || (self.curr == 0 && self.prev == 0)
    }
}

impl Counter for ApproxState {
    type Ctx = u64;

    fn empty(now: u64, w: u64) -> Self {
        Self {
            start: now - now % w,
            curr: 0,
            prev: 0,
        }
    }

    fn normalize(&mut self, now: u64, w: u64) {
        let start = now - now % w;
        if self.start < start {
            self.prev = if self.start.checked_add(w) == Some(start) {
                self.curr
            } else {
                0
            };
            self.curr = 0;
            self.start = start;
        }
        // `self.start > start`: the clock stepped back; keep the later state.
    }

    fn eval(&self, now: u64, w: u64, check: &Check) -> Decision {
        let elapsed = now % w;
        let (curr, prev) = (self.curr, self.prev);
        let used = curr.saturating_add(mul_div_floor(prev, w - elapsed, w));
        decision(check, used, w - elapsed, || {
            let (limit, cost) = (check.limit, check.cost);
            match (limit - cost).checked_sub(curr) {
                // `curr + cost <= limit`: wait until enough of `prev` has faded.
                Some(room) => {
                    let e = mul_div_ceil(prev.saturating_sub(room), w, prev);
                    Some(e.saturating_sub(elapsed))
                }
                // Wait into the next window, where `prev' = curr`.
                None => {
                    let e = mul_div_ceil(curr - (limit - cost), w, curr);
                    Some((w - elapsed).saturating_add(e))
                }
            }
        })
    }

    fn consume(&mut self, _now: u64, _: Self::Ctx, cost: u64) -> Option<Lease> {
        self.curr = self.curr.saturating_add(cost);
        None
    }

    fn unconsume(&mut self, _now: u64, _: u64, cost: u64) -> bool {
        self.curr = self.curr.saturating_sub(cost);
        self.curr == 0 && self.prev == 0
    }
}

/// `floor(a * b / c)` without overflow, saturating; 0 when `c == 0`.
pub(super) fn mul_div_floor(a: u64, b: u64, c: u64) -> u64 {
    if c == 0 {
        return 0;
    }
    u64::try_from(u128::from(a) * u128::from(b) / u128::from(c)).unwrap_or(u64::MAX)
}

/// `ceil(a * b / c)` without overflow, saturating; 0 when `c == 0`.
pub(super) fn mul_div_ceil(a: u64, b: u64, c: u64) -> u64 {
    if c == 0 {
        return 0;
    }
    let c = u128::from(c);
    u64::try_from((u128::from(a) * u128::from(b)).div_ceil(c)).unwrap_or(u64::MAX)
}
