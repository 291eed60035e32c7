//! The sliding window of sub-buckets
//! ([`Algorithm::SlidingWindow`](crate::store::Algorithm::SlidingWindow)), the
//! default rate limit.
//!
//! # Formula
//!
//! The window `W` (ms) is split into `k = 8` sub-buckets of `b = ceil(W / k)`
//! ms, aligned to multiples of `b`: bucket `j` holds the units admitted in
//! `[j·b, (j+1)·b)`. At `now`, with `c = floor(now / b)` and
//! `j0 = floor((now − W + 1) / b)`,
//!
//! ```text
//! used(now) = Σ count[j] for j0 ≤ j ≤ c
//! ```
//!
//! and a request of `cost` is admitted when `used + cost ≤ limit`, adding
//! `cost` to bucket `c`. At most `k + 1` buckets are counted (`c − j0 ≤ k`),
//! so a ring of `k + 1` counters holds the state.
//!
//! # Error bound
//!
//! The counted buckets cover `[j0·b, now]`, which contains the true window
//! `(now − W, now]` and at most `b − 1` ms more before it (the part of bucket
//! `j0` that already left the window). So, against the exact sliding log fed
//! the same admissions:
//!
//! * `used ≥ exact used`: the window **never admits more than `limit` in any
//!   window-long span** (every admission at `t` counted all of `(t − W, t]`);
//! * `used − exact used ≤ count[j0]` restricted to `[j0·b, now − W]`: the
//!   only error is refusing requests that units admitted up to
//!   `b = ceil(W/k)` ms too long ago still block — one bucket, `W/k` of
//!   time, only towards refusing.
//!
//! `benches/accuracy.rs` measures what this costs in refused requests
//! (BENCHMARKS.md §5); a property test checks both bounds against brute force
//! on random traces.
//!
//! Finer layouts refuse less on bursts but not under steady overload:
//! `examples/accuracy_bound.rs` replays 16, 32 and 60 buckets, buckets
//! counted until their last admission + `W`, buckets opened on demand, and
//! the exact log with its times rounded up to `r` ms (BENCHMARKS.md §5.1).
//! At a steady 1.5–3× the limit, every request that arrives between a
//! unit's true expiry and the moment the state lets it go is refused
//! although it would fit; keeping that under 5 % takes about 100 ms of
//! resolution per unit — a log, not 24 bytes.
//!
//! # Memory
//!
//! 24 bytes per key when every limit of the policy is at most 65 535 (nine
//! 16-bit counts and a 48-bit bucket index: an admitted bucket never holds
//! more than the limit); otherwise the counters of the policy are widened to
//! 64-bit counts in an 80-byte box.

use super::{decision, Counter};
use crate::store::{Check, Decision, Lease};

/// Sub-buckets per window.
pub(crate) const K: u64 = 8;
/// Counters kept: the current bucket and the `k` before it.
pub(super) const SLOTS: usize = K as usize + 1;
/// Bucket indices are kept in 48 bits.
const MAX_INDEX: u64 = (1 << 48) - 1;

/// The window and bucket width of a table, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Geometry {
    /// The window `W` (at least 1).
    pub(super) w: u64,
    /// The bucket width `b = ceil(W / k)`.
    pub(super) b: u64,
}

impl Geometry {
    pub(super) fn new(w: u64) -> Self {
        let w = w.max(1);
        Self {
            w,
            b: w.div_ceil(K),
        }
    }

    /// `floor(t / b)`, at most 2⁴⁸ − 1.
    pub(super) fn index(self, t: u64) -> u64 {
        (t / self.b).min(MAX_INDEX)
    }

    /// The oldest bucket counted at `t`: `floor((t − W + 1) / b)`, 0 when negative.
    fn first(self, t: u64) -> u64 {
        self.index(t.saturating_add(1).saturating_sub(self.w))
    }

    /// When bucket `j` stops being counted: `(j+1)·b + W − 1`.
    fn expiry(self, j: u64) -> u64 {
        j.saturating_add(1)
            .saturating_mul(self.b)
            .saturating_add(self.w - 1)
    }
}

/// A count of one bucket: 16 or 64 bits.
pub(super) trait Cell: Copy + Default {
    fn get(self) -> u64;
    /// Saturating.
    fn of(value: u64) -> Self;
}

impl Cell for u16 {
    fn get(self) -> u64 {
        u64::from(self)
    }
    fn of(value: u64) -> Self {
        u16::try_from(value).unwrap_or(u16::MAX)
    }
}

impl Cell for u64 {
    fn get(self) -> u64 {
        self
    }
    fn of(value: u64) -> Self {
        value
    }
}

/// The largest limit the 16-bit counts hold.
pub(super) const NARROW_LIMIT: u64 = u16::MAX as u64;

/// The ring of the newest `k + 1` buckets: bucket `j` in slot `j % (k + 1)`,
/// `head` the newest bucket index (48 bits, split so that the 16-bit form
/// is 24 bytes).
#[derive(Debug, Clone, Copy)]
pub(super) struct SubBuckets<C> {
    head_lo: u32,
    head_hi: u16,
    counts: [C; SLOTS],
}

impl<C: Cell> SubBuckets<C> {
    pub(super) fn head(&self) -> u64 {
        u64::from(self.head_lo) | (u64::from(self.head_hi) << 32)
    }

    /// The state of newest bucket `head` (at most 2⁴⁸ − 1) and the ring
    /// `counts` (bucket `j` in slot `j % (k + 1)`).
    pub(super) fn from_parts(head: u64, counts: [C; SLOTS]) -> Self {
        let mut state = Self {
            head_lo: 0,
            head_hi: 0,
            counts,
        };
        state.set_head(head.min(MAX_INDEX));
        state
    }

    /// The ring of counts (bucket `j` in slot `j % (k + 1)`).
    pub(super) fn counts(&self) -> &[C; SLOTS] {
        &self.counts
    }

    fn set_head(&mut self, j: u64) {
        self.head_lo = j as u32;
        self.head_hi = (j >> 32) as u16;
    }

    fn count(&self, j: u64) -> u64 {
        self.counts[(j % SLOTS as u64) as usize].get()
    }

    /// The time the state is read at: `now`, or the start of its newest
    /// bucket when the clock stepped back before it.
    fn at(&self, now: u64, g: Geometry) -> u64 {
        now.max(self.head().saturating_mul(g.b))
    }

    /// The counted buckets at `now`: `j0..=head` (empty when all expired).
    fn counted(&self, now: u64, g: Geometry) -> std::ops::RangeInclusive<u64> {
        g.first(self.at(now, g))..=self.head()
    }

    /// `used` at `now`.
    fn used(&self, now: u64, g: Geometry) -> u64 {
        self.counted(now, g)
            .fold(0u64, |sum, j| sum.saturating_add(self.count(j)))
    }

    /// Every counted bucket has expired: the state counts nothing any more.
    pub(super) fn idle(&self, now: u64, g: Geometry) -> bool {
        now >= g.expiry(self.head()) || self.counts.iter().all(|c| c.get() == 0)
    }

    /// The same units, read under another window: what `old` counts at
    /// `now` moves into the current bucket of `new` (towards refusing: the
    /// units count for a whole new window from now).
    pub(super) fn rebase<D: Cell>(&self, now: u64, old: Geometry, new: Geometry) -> SubBuckets<D> {
        let mut state = SubBuckets::<D>::empty(now, new);
        let c = state.head();
        state.counts[(c % SLOTS as u64) as usize] = D::of(self.used(now, old));
        state
    }

    /// The same state with another cell width.
    pub(super) fn widen<D: Cell>(&self) -> SubBuckets<D> {
        SubBuckets {
            head_lo: self.head_lo,
            head_hi: self.head_hi,
            counts: self.counts.map(|c| D::of(c.get())),
        }
    }
}

impl<C: Cell> Counter for SubBuckets<C> {
    type Ctx = Geometry;

    fn empty(now: u64, g: Geometry) -> Self {
        let mut state = Self {
            head_lo: 0,
            head_hi: 0,
            counts: [C::default(); SLOTS],
        };
        state.set_head(g.index(now));
        state
    }

    fn normalize(&mut self, now: u64, g: Geometry) {
        let c = g.index(now);
        let head = self.head();
        if c > head {
            // Buckets head+1..=c start empty; their slots held buckets no
            // longer counted (j − k − 1 < j0).
            for j in head.saturating_add(1)..=c.min(head.saturating_add(SLOTS as u64)) {
                self.counts[(j % SLOTS as u64) as usize] = C::default();
            }
            self.set_head(c);
        }
        // `c < head`: the clock stepped back; the state is read at its head.
    }

    #[inline(always)]
    fn eval(&self, now: u64, g: Geometry, check: &Check) -> Decision {
        let (first, head) = (g.first(self.at(now, g)), self.head());
        // Buckets `first..=head`, oldest first: `n` (at most `k + 1`)
        // slots from `first`'s, wrapping. Every slot is summed, with a mask
        // of the non-empty ones (no branch), then the slots past `n` are
        // taken off again (`n` is `k + 1` or `k` unless the clock stepped).
        let n = head
            .saturating_add(1)
            .saturating_sub(first)
            .min(SLOTS as u64) as usize;
        let start = (first % SLOTS as u64) as usize;
        let mut total = 0u128;
        let mut full = 0u32;
        for (slot, count) in self.counts.iter().enumerate() {
            let count = count.get();
            total += u128::from(count);
            full |= u32::from(count != 0) << slot;
        }
        for age in n..SLOTS {
            let slot = (start + age) % SLOTS;
            total -= u128::from(self.counts[slot].get());
        }
        let used = u64::try_from(total).unwrap_or(u64::MAX);
        // The mask by age (bit `i`: bucket `first + i`), counted ones only.
        let by_age = ((full >> start) | (full << (SLOTS - start))) & ((1 << n) - 1);
        let oldest = by_age.trailing_zeros() as usize;
        let until = |j: u64| g.expiry(j).saturating_sub(now);
        let reset = if oldest < SLOTS {
            until(first + oldest as u64)
        } else {
            0
        };
        decision(check, used, reset, || {
            // Buckets expire oldest first: the first whose expiry frees
            // `need` units.
            let need = used - (check.limit - check.cost);
            let mut freed = 0u64;
            self.counted(now, g).find_map(|j| {
                freed = freed.saturating_add(self.count(j));
                (freed >= need).then(|| until(j))
            })
        })
    }

    fn admitted(
        state: Option<&Self>,
        now: u64,
        g: Geometry,
        check: &Check,
        decision: &mut Decision,
    ) {
        if decision.used == 0 && check.cost > 0 {
            // The units just added are the oldest ones counted.
            let c = state.map_or(0, |s| s.head()).max(g.index(now));
            decision.reset = std::time::Duration::from_millis(g.expiry(c).saturating_sub(now));
        }
        super::add_cost(decision, check);
    }

    fn consume(&mut self, _now: u64, _: Geometry, cost: u64) -> Option<Lease> {
        let slot = &mut self.counts[(self.head() % SLOTS as u64) as usize];
        *slot = C::of(slot.get().saturating_add(cost));
        None
    }

    fn unconsume(&mut self, _now: u64, _: Geometry, cost: u64) -> bool {
        // Admitted, so the bucket did not saturate: `cost` comes off exactly.
        let slot = &mut self.counts[(self.head() % SLOTS as u64) as usize];
        *slot = C::of(slot.get().saturating_sub(cost));
        self.counts.iter().all(|c| c.get() == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact() {
        assert_eq!(std::mem::size_of::<SubBuckets<u16>>(), 24);
        assert_eq!(std::mem::size_of::<SubBuckets<u64>>(), 80);
    }

    #[test]
    fn geometry() {
        let g = Geometry::new(60_000);
        assert_eq!(g.b, 7_500);
        assert_eq!(g.first(59_999), 0);
        assert_eq!(g.first(67_499), 1);
        assert_eq!(g.expiry(0), 67_499);
        let g = Geometry::new(5);
        assert_eq!((g.w, g.b), (5, 1));
        assert_eq!(g.first(4), 0);
        assert_eq!(g.first(5), 1);
    }
}
