//! What the admission layer computes once per plan instead of once per
//! request: for each rule, the plan's limit and algorithm, and the rendered
//! `RateLimit-Policy` values.
//!
//! A [`PlanCache`] is a direct-mapped table of [`PlanCache::SLOTS`] entries
//! keyed by the plan's address, read without a lock (one `ArcSwap` load).
//! Each entry holds a [`Weak`] to its plan: the weak count keeps the plan's
//! allocation alive, so no other plan can take that address while the entry
//! exists, and an equal address means the same (immutable) plan. A hot
//! reload makes new plans, hence new keys; stale entries are overwritten by
//! the next plan that maps to their slot. Two live plans on one slot take it
//! in turns, each turn costing one rebuild (a few allocations), never a
//! wrong answer. Tenants without overrides share their plan's `Arc`, so a
//! handful of entries serve every tenant on the usual plans.

use std::ops::Deref;
use std::sync::{Arc, Weak};

use arc_swap::{ArcSwapOption, Guard};

use crate::plan::Plan;

struct Slot<T> {
    plan: Weak<Plan>,
    value: T,
}

/// A per-plan value, borrowed from the cache or freshly built.
pub(super) struct Cached<T>(Handle<T>);

enum Handle<T> {
    Loaded(Guard<Option<Arc<Slot<T>>>>),
    Built(Arc<Slot<T>>),
}

impl<T> Cached<T> {
    /// An owned handle (for a request that waits on the store).
    pub(super) fn shared(&self) -> Shared<T> {
        match &self.0 {
            Handle::Loaded(guard) => Shared(
                guard
                    .as_ref()
                    .map(Arc::clone)
                    .expect("a loaded entry is present"),
            ),
            Handle::Built(slot) => Shared(slot.clone()),
        }
    }
}

impl<T> Deref for Cached<T> {
    type Target = T;
    fn deref(&self) -> &T {
        match &self.0 {
            Handle::Loaded(guard) => match &**guard {
                Some(slot) => &slot.value,
                None => unreachable!("a loaded entry is present"),
            },
            Handle::Built(slot) => &slot.value,
        }
    }
}

/// An owned handle on a per-plan value.
pub(super) struct Shared<T>(Arc<Slot<T>>);

impl<T> Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0.value
    }
}

/// Per-plan values, see the [module documentation](self).
pub(super) struct PlanCache<T> {
    slots: Box<[ArcSwapOption<Slot<T>>]>,
}

impl<T> PlanCache<T> {
    const SLOTS: usize = 64;

    pub(super) fn new() -> Self {
        Self {
            slots: (0..Self::SLOTS).map(|_| ArcSwapOption::empty()).collect(),
        }
    }

    /// The value for `plan`, built by `build` when the cache has none.
    #[inline(always)]
    pub(super) fn get(&self, plan: &Arc<Plan>, build: impl FnOnce(&Plan) -> T) -> Cached<T> {
        let address = Arc::as_ptr(plan);
        // Fibonacci hashing of the address (allocations are 16-aligned).
        let index = ((address as usize >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as usize)
            >> (usize::BITS - Self::SLOTS.trailing_zeros()))
            % Self::SLOTS;
        let slot = &self.slots[index];
        let loaded = slot.load();
        if loaded
            .as_ref()
            .is_some_and(|s| std::ptr::eq(s.plan.as_ptr(), address))
        {
            return Cached(Handle::Loaded(loaded));
        }
        drop(loaded);
        let built = Arc::new(Slot {
            plan: Arc::downgrade(plan),
            value: build(plan),
        });
        slot.store(Some(built.clone()));
        Cached(Handle::Built(built))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_build_per_plan_and_rebuild_after_reload() {
        let cache = PlanCache::<String>::new();
        let free = Arc::new(Plan::new("free"));
        let mut builds = 0;
        for _ in 0..3 {
            let v = cache.get(&free, |p| {
                builds += 1;
                p.name.clone()
            });
            assert_eq!(&*v, "free");
        }
        assert_eq!(builds, 1);
        // Same contents, another plan (a reload): its own entry.
        let reloaded = Arc::new(Plan::new("free"));
        let v = cache.get(&reloaded, |p| {
            builds += 1;
            format!("{} again", p.name)
        });
        assert_eq!(&*v, "free again");
        assert_eq!(&*v.shared(), "free again");
        assert_eq!(builds, 2);
    }

    #[test]
    fn a_dropped_plan_is_never_confused_with_a_new_one() {
        let cache = PlanCache::<u32>::new();
        for i in 0..1000u32 {
            // Each plan is dropped at the end of the iteration; the
            // allocator may reuse its memory, the cache must not.
            let plan = Arc::new(Plan::new(format!("p{i}")));
            assert_eq!(*cache.get(&plan, |_| i), i);
        }
    }
}
