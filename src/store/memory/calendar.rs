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

impl CalendarState {
    pub(super) fn idle(&self, now: u64) -> bool {
        now >= period_bounds(self.period, self.start).1
    }
}

impl Counter for CalendarState {
    type Ctx = Period;

    fn empty(now: u64, period: Period) -> Self {
        Self {
            start: period_bounds(period, now).0,
            count: 0,
            period,
        }
    }

    fn normalize(&mut self, now: u64, period: Period) {
        let start = period_bounds(period, now).0;
        if self.period != period || self.start < start {
            *self = Self {
                start,
                count: 0,
                period,
            };
        }
        // `self.start > start`: the clock stepped back; keep the later state.
    }

    fn eval(&self, now: u64, period: Period, check: &Check) -> Decision {
        let until_end = period_bounds(period, now).1.saturating_sub(now);
        decision(check, self.count, until_end, || Some(until_end))
    }

    fn consume(&mut self, _now: u64, _: Self::Ctx, cost: u64) -> Option<Lease> {
        self.count = self.count.saturating_add(cost);
        None
    }

    fn unconsume(&mut self, _now: u64, _: Period, cost: u64) -> bool {
        self.count = self.count.saturating_sub(cost);
        self.count == 0
    }
}
