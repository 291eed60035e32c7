//! The sliding log ([`Algorithm::SlidingLog`](crate::store::Algorithm::SlidingLog)): exact.
//!
//! Every admitted millisecond is kept with its units until it leaves the
//! window, so `used` is exactly the units of `(now − W, now]`: no error,
//! O(distinct admitted milliseconds in the window) memory per key.

use std::collections::VecDeque;

use super::{decision, Counter};
use crate::store::{Check, Decision, Lease};

/// Sliding log: `(t, cumulative units)` per distinct admitted millisecond,
/// oldest first. `base` is the cumulative count of the entries already
/// expired, so `used = last.cum - base` and the units freed by the expiry of
/// entry `k` are `cum_k - base` (a binary search finds the retry time).
/// Cumulative counts wrap; differences stay exact because the units in the
/// window never exceed `u64::MAX`.
pub(super) struct LogState {
    /// The window of the last call (for the sweep).
    window: u64,
    base: u64,
    pub(super) entries: VecDeque<(u64, u64)>,
}

impl LogState {
    pub(super) fn used(&self) -> u64 {
        self.entries
            .back()
            .map_or(0, |&(_, cum)| cum.wrapping_sub(self.base))
    }

    pub(super) fn expire(&mut self, now: u64) {
        while let Some(&(t, cum)) = self.entries.front() {
            if t.saturating_add(self.window) > now {
                break;
            }
            self.base = cum;
            self.entries.pop_front();
        }
    }

    pub(super) fn shrink(&mut self) {
        if self.entries.capacity() > 16 && self.entries.len() < self.entries.capacity() / 4 {
            self.entries.shrink_to(self.entries.len() * 2);
        }
    }
}

impl Counter for LogState {
    type Ctx = u64;

    fn empty(_now: u64, w: u64) -> Self {
        Self {
            window: w,
            base: 0,
            entries: VecDeque::new(),
        }
    }

    fn normalize(&mut self, now: u64, w: u64) {
        self.window = w;
        self.expire(now);
    }

    fn eval(&self, now: u64, w: u64, check: &Check) -> Decision {
        let used = self.used();
        let expiry = |t: u64| t.saturating_add(w).saturating_sub(now);
        let reset = self.entries.front().map_or(0, |&(t, _)| expiry(t));
        decision(check, used, reset, || {
            // The oldest entries expire first; find the first whose expiry
            // frees `need` units.
            let need = used.saturating_sub(check.limit - check.cost);
            let k = self
                .entries
                .partition_point(|&(_, cum)| cum.wrapping_sub(self.base) < need);
            self.entries.get(k).map(|&(t, _)| expiry(t))
        })
    }

    fn admitted(_state: Option<&Self>, _now: u64, w: u64, check: &Check, decision: &mut Decision) {
        // The entry just added becomes the oldest one of an empty log.
        if decision.used == 0 && check.cost > 0 {
            decision.reset = std::time::Duration::from_millis(w);
        }
        super::add_cost(decision, check);
    }

    fn consume(&mut self, now: u64, _: Self::Ctx, cost: u64) -> Option<Lease> {
        match self.entries.back_mut() {
            // Same millisecond (or the clock stepped back): merge.
            Some((t, cum)) if *t >= now => *cum = cum.wrapping_add(cost),
            Some(&mut (_, cum)) => self.entries.push_back((now, cum.wrapping_add(cost))),
            None => self.entries.push_back((now, self.base.wrapping_add(cost))),
        }
        None
    }

    fn unconsume(&mut self, _now: u64, _: u64, cost: u64) -> bool {
        // The newest entry took the units: merged into it, or pushed (then
        // it counts exactly `cost` and goes).
        let len = self.entries.len();
        let before = match len {
            0 => return true,
            1 => self.base,
            _ => self.entries[len - 2].1,
        };
        if let Some((_, cum)) = self.entries.back_mut() {
            *cum = cum.wrapping_sub(cost);
            if *cum == before {
                self.entries.pop_back();
            }
        }
        self.entries.is_empty()
    }
}
