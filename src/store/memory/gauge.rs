//! Gauges: a level moved by admissions and by
//! [`CounterStore::adjust`](crate::store::CounterStore::adjust), saturating
//! at 0 and `u64::MAX`.

use super::{decision, Counter};
use crate::store::{Check, Decision, Lease};

/// `level` moved by `delta`, saturating.
pub(super) fn moved(level: u64, delta: i64) -> u64 {
    if delta >= 0 {
        level.saturating_add(delta.unsigned_abs())
    } else {
        level.saturating_sub(delta.unsigned_abs())
    }
}

/// A gauge's level (see the [module docs](self)).
pub(super) struct Gauge(pub(super) u64);

impl Counter for Gauge {
    type Ctx = ();

    fn empty(_now: u64, _: ()) -> Self {
        Self(0)
    }

    fn normalize(&mut self, _now: u64, _: ()) {}

    fn eval(&self, _now: u64, _: (), check: &Check) -> Decision {
        decision(check, self.0, 0, || None)
    }

    fn consume(&mut self, _now: u64, _: Self::Ctx, cost: u64) -> Option<Lease> {
        self.0 = self.0.saturating_add(cost);
        None
    }

    fn unconsume(&mut self, _now: u64, _: (), cost: u64) -> bool {
        self.0 = self.0.saturating_sub(cost);
        self.0 == 0
    }
}
