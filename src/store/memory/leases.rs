//! Concurrency limits ([`Algorithm::Concurrency`](crate::store::Algorithm::Concurrency)):
//! units held by live leases, released without a lock when a [`Lease`] is dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{decision, Counter};
use crate::store::{Check, Decision, Lease};

/// `retry_after` of a denied concurrency check.
const CONCURRENCY_RETRY_MS: u64 = 1_000;

/// The leases taken by one call, without allocating for the usual zero or one.
#[derive(Default)]
pub(super) struct Leases {
    first: Option<Lease>,
    more: Vec<Lease>,
}

impl Leases {
    #[inline]
    pub(super) fn push(&mut self, lease: Lease) {
        if self.first.is_none() {
            self.first = Some(lease);
        } else {
            self.more.push(lease);
        }
    }

    #[inline]
    pub(super) fn into_lease(self) -> Option<Lease> {
        match self.first {
            None => None,
            Some(first) if self.more.is_empty() => Some(first),
            Some(first) => {
                let mut all = self.more;
                all.push(first);
                Lease::many(all)
            }
        }
    }
}

/// Concurrency: units held by live leases.
pub(super) struct Inflight(pub(super) Arc<AtomicU64>);

impl Inflight {
    pub(super) fn idle(&self) -> bool {
        // Leases are only created under the shard lock, so with no other
        // reference none can appear while the sweep holds it.
        Arc::strong_count(&self.0) == 1 && self.0.load(Ordering::Acquire) == 0
    }
}

impl Counter for Inflight {
    type Ctx = ();

    fn empty(_now: u64, _: ()) -> Self {
        Self(Arc::new(AtomicU64::new(0)))
    }

    fn normalize(&mut self, _now: u64, _: ()) {}

    fn eval(&self, _now: u64, _: (), check: &Check) -> Decision {
        decision(check, self.0.load(Ordering::Acquire), 0, || {
            Some(CONCURRENCY_RETRY_MS)
        })
    }

    fn eval_missing(_now: u64, _: (), check: &Check) -> Decision {
        decision(check, 0, 0, || Some(CONCURRENCY_RETRY_MS))
    }

    fn consume(&mut self, _now: u64, _: Self::Ctx, cost: u64) -> Option<Lease> {
        // Admitted, so `used + cost <= limit`: no overflow. Releases only
        // lower the counter, so it stays within the limit.
        self.0.fetch_add(cost, Ordering::AcqRel);
        Some(Lease::counter(self.0.clone(), cost))
    }

    fn unconsume(&mut self, _now: u64, _: (), _cost: u64) -> bool {
        // The units came back when the call's lease was dropped.
        self.idle()
    }
}
