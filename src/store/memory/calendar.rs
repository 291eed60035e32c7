//! Calendar quotas ([`Algorithm::Calendar`](crate::store::Algorithm::Calendar)):
//! one count per UTC-aligned period, exact.

use super::{decision, Counter};
use crate::plan::Period;
use crate::store::calendar::period_bounds;
use crate::store::{Check, Decision, Lease};

/// Calendar quota: the count of the period starting at `start`.
pub(super) struct CalendarState {
    start: u64,
    count: u64,
    period: Period,
}

/// A check's period and the bounds of the one containing the call's `now`,
/// computed once per check (the period's arithmetic is not free for weeks
/// and months).
#[derive(Debug, Clone, Copy)]
pub(super) struct Bounds {
    period: Period,
    start: u64,
    end: u64,
}

impl Bounds {
    /// The bounds of `period` at `now`.
    pub(super) fn at(period: Period, now: u64) -> Self {
        let (start, end) = period_bounds(period, now);
        Self { period, start, end }
    }
}

impl CalendarState {
    pub(super) fn idle(&self, now: u64) -> bool {
        now >= period_bounds(self.period, self.start).1
    }
}

impl Counter for CalendarState {
    type Ctx = Bounds;

    fn empty(_now: u64, b: Bounds) -> Self {
        Self {
            start: b.start,
            count: 0,
            period: b.period,
        }
    }

    fn normalize(&mut self, _now: u64, b: Bounds) {
        if self.period != b.period || self.start < b.start {
            *self = Self {
                start: b.start,
                count: 0,
                period: b.period,
            };
        }
        // `self.start > start`: the clock stepped back; keep the later state.
    }

    fn eval(&self, now: u64, b: Bounds, check: &Check) -> Decision {
        let until_end = b.end.saturating_sub(now);
        decision(check, self.count, until_end, || Some(until_end))
    }

    fn consume(&mut self, _now: u64, _: Self::Ctx, cost: u64) -> Option<Lease> {
        self.count = self.count.saturating_add(cost);
        None
    }

    fn unconsume(&mut self, _now: u64, _: Bounds, cost: u64) -> bool {
        self.count = self.count.saturating_sub(cost);
        self.count == 0
    }
}
