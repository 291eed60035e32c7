//! Soft-threshold marks ([`Check::soft_percent`]): which counters already
//! reported crossing their soft threshold in the current window or period.

use super::{window_ms, HashMap, Key, KeyView};
use crate::store::{Algorithm, Check, Decision};
use crate::tenant::TenantId;

/// (tenant, policy) → the time (ms) until which a crossing is remembered,
/// one table for rate limits and one for calendar quotas (a plan may name a
/// rate and a quota alike: each has its own mark). Holds an entry only for
/// counters that crossed; swept with the counters.
#[derive(Default)]
pub(super) struct SoftMarks {
    rates: HashMap<Key, u64>,
    quotas: HashMap<Key, u64>,
}

impl SoftMarks {
    /// For a check that consumed: whether `decision` is at or above the
    /// check's soft threshold with no crossing remembered at `now` — then
    /// it is remembered for a window (rate algorithms) or until the
    /// period's end (calendar quotas).
    pub(super) fn cross(
        &mut self,
        tenant: &TenantId,
        check: &Check,
        decision: &Decision,
        now: u64,
    ) -> bool {
        let Some(percent) = check.soft_percent else {
            return false;
        };
        let Some(hold) = hold_ms(check, decision) else {
            return false;
        };
        if u128::from(decision.used) * 100 < u128::from(decision.limit) * u128::from(percent) {
            return false;
        }
        let until = now.saturating_add(hold);
        let view: &dyn KeyView = &(tenant.as_str(), &*check.policy);
        let marks = match check.algorithm {
            Algorithm::Calendar { .. } => &mut self.quotas,
            _ => &mut self.rates,
        };
        match marks.get_mut(view) {
            Some(marked) if *marked > now => false,
            Some(marked) => {
                *marked = until;
                true
            }
            None => {
                marks.insert(Key::new(tenant, check), until);
                true
            }
        }
    }

    /// Forgets the crossings whose window or period is over.
    pub(super) fn sweep(&mut self, now: u64) {
        for marks in [&mut self.rates, &mut self.quotas] {
            marks.retain(|_, until| *until > now);
            super::shrink(marks);
        }
    }
}

/// How long a crossing is remembered: the window of a rate algorithm, the
/// rest of the period of a calendar quota; `None` for the other kinds.
fn hold_ms(check: &Check, decision: &Decision) -> Option<u64> {
    match check.algorithm {
        Algorithm::Calendar { .. } => {
            Some(u64::try_from(decision.reset.as_millis()).unwrap_or(u64::MAX))
        }
        algorithm => algorithm.rate_window().map(window_ms),
    }
}
