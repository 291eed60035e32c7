//! Hot sliding windows: the sub-bucket counter of a key whose shard lock is
//! contended, decided and updated without that lock (issue 11, goal 3).
//!
//! # Why
//!
//! Every call on one tenant takes the same shard's mutex: with two threads
//! on one hot key, the lock word, the table and the counter all move between
//! the cores on every call, and a contended lock spins or parks. A hot key's
//! state is therefore moved out of the shard's table into a [`HotWindow`]
//! that single-check calls update with one compare-and-swap, found through a
//! small per-thread cache (no shared write to find it).
//!
//! # Layout
//!
//! The newest bucket's index (low 24 bits), a busy bit and the newest
//! bucket's count (39 bits) share one `AtomicU64`, the *word*; the index's
//! high bits and the `k` older buckets of the ring are atomics beside it,
//! written only while the word is busy. The state is the one of
//! [`SubBuckets`] with 64-bit counts, so decisions are those of the locked
//! path bit for bit.
//!
//! # Protocol (a seqlock whose readers may also write the count)
//!
//! * Only a holder of the shard's lock sets the busy bit ([`HotWindow::begin`]),
//!   changes anything else, and clears it ([`HotWindow::publish`]) — or
//!   leaves the window retired for good ([`HotWindow::retire`]) when it moves
//!   the state back into the table.
//! * Without the lock ([`HotWindow::take`]): read the word; when busy, or when
//!   the newest bucket is not the current one (a rollover is due), take the
//!   lock instead. Otherwise read the older buckets, decide exactly as the
//!   locked path, and make the decision count with a compare-and-swap of the
//!   word from the value read to the value plus the cost (or, when nothing
//!   is consumed, check that the word is unchanged). Since the older buckets
//!   and the index only change while the word is busy, an unchanged word
//!   means that the whole state read is the state at the swap: the call is
//!   linearized there, as if it had held the lock. The index in the word is
//!   monotonic (the newest bucket never moves back), so the word can only
//!   come back to an earlier value after 2²⁴ buckets (4.6 hours at the
//!   shortest bucket of 1 ms) — a thread stalled that long between two loads.
//!
//! A batch of several checks, a soft threshold, a rollover or a count past
//! 2³⁹ − 1 takes the lock; a batch that touches a hot key moves it back into
//! the table first (so that the batch stays atomic), and the sweep drops hot
//! windows once idle like any other counter.

use std::cell::RefCell;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;

use super::window::{Geometry, SubBuckets, SLOTS};
use super::Counter;
use crate::store::{Check, Decision};
use crate::tenant::TenantId;

/// Bits of the newest bucket's count in the word.
const COUNT_BITS: u32 = 39;
/// The largest count the word holds.
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
/// Set while a lock holder changes the state (and for good once retired).
const BUSY: u64 = 1 << COUNT_BITS;
/// The low bits of the newest bucket's index sit above the busy bit.
const HEAD_SHIFT: u32 = COUNT_BITS + 1;
/// How many low bits of the index the word holds.
const HEAD_LO_BITS: u32 = 64 - HEAD_SHIFT;
const HEAD_LO_MASK: u64 = (1 << HEAD_LO_BITS) - 1;
/// The word of a window moved back into its table.
const RETIRED: u64 = u64::MAX;
/// Compare-and-swap attempts before taking the lock.
const RETRIES: usize = 8;

/// The sub-bucket state of one hot key, read and updated without the lock
/// (see the [module docs](self)).
pub(super) struct HotWindow {
    /// Newest bucket index (low 24 bits) | busy | newest bucket's count.
    word: AtomicU64,
    /// The newest bucket index shifted right by 24.
    head_hi: AtomicU64,
    /// The ring of counts (bucket `j` in slot `j % (k + 1)`); the newest
    /// bucket's slot is unused (its count is in the word).
    counts: [AtomicU64; SLOTS],
}

impl HotWindow {
    /// A window holding `state`; `None` when its newest count does not fit
    /// the word.
    pub(super) fn new(state: &SubBuckets<u64>) -> Option<Self> {
        let hot = Self {
            word: AtomicU64::new(BUSY),
            head_hi: AtomicU64::new(0),
            counts: Default::default(),
        };
        hot.publish(state).then_some(hot)
    }

    /// With the shard's lock held: the state, the window busy until
    /// [`publish`](Self::publish) or [`retire`](Self::retire) (the lock-free
    /// path takes the lock meanwhile).
    pub(super) fn begin(&self) -> SubBuckets<u64> {
        let word = self.word.fetch_or(BUSY, Ordering::Acquire);
        // Orders the stores that follow after the busy bit for a reader that
        // sees one of them (fence to fence synchronization).
        fence(Ordering::Release);
        self.read(word)
    }

    /// With the shard's lock held, after [`begin`](Self::begin): stores
    /// `state` and clears the busy bit. `false` (left busy) when the newest
    /// count does not fit the word: the caller retires the window.
    pub(super) fn publish(&self, state: &SubBuckets<u64>) -> bool {
        let head = state.head();
        let slot = (head % SLOTS as u64) as usize;
        let count = state.counts()[slot];
        if count > COUNT_MAX {
            return false;
        }
        for (i, (cell, &c)) in self.counts.iter().zip(state.counts()).enumerate() {
            cell.store(if i == slot { 0 } else { c }, Ordering::Relaxed);
        }
        self.head_hi.store(head >> HEAD_LO_BITS, Ordering::Relaxed);
        self.word.store(
            ((head & HEAD_LO_MASK) << HEAD_SHIFT) | count,
            Ordering::Release,
        );
        true
    }

    /// With the shard's lock held, after [`begin`](Self::begin): the state
    /// moves back into the table; lock-free callers stop using this window.
    pub(super) fn retire(&self) {
        self.word.store(RETIRED, Ordering::Release);
    }

    fn retired(&self) -> bool {
        self.word.load(Ordering::Relaxed) == RETIRED
    }

    /// The state for a word read (the caller validates it).
    fn read(&self, word: u64) -> SubBuckets<u64> {
        let head = (self.head_hi.load(Ordering::Relaxed) << HEAD_LO_BITS) | (word >> HEAD_SHIFT);
        let mut counts = [0u64; SLOTS];
        for (c, cell) in counts.iter_mut().zip(&self.counts) {
            *c = cell.load(Ordering::Relaxed);
        }
        counts[(head % SLOTS as u64) as usize] = word & COUNT_MAX;
        SubBuckets::from_parts(head, counts)
    }

    /// Without the lock: the decision of a one-check call (admitted and
    /// consumed when it allows and `commit`), exactly as the locked path
    /// would make it; `None` when the lock is needed (busy, a rollover due,
    /// the count full, or too many lost races).
    pub(super) fn take(
        &self,
        now: u64,
        g: Geometry,
        check: &Check,
        commit: bool,
    ) -> Option<Decision> {
        let current = g.index(now);
        for _ in 0..RETRIES {
            let word = self.word.load(Ordering::Acquire);
            if word & BUSY != 0 {
                return None;
            }
            let state = self.read(word);
            // The loads of `read` before the validation below.
            fence(Ordering::Acquire);
            if state.head() != current {
                return None;
            }
            // The newest bucket is the current one: `normalize` has nothing
            // to do.
            let mut decision = state.eval(now, g, check);
            if decision.allowed {
                SubBuckets::admitted(Some(&state), now, g, check, &mut decision);
                if commit && check.cost > 0 {
                    let count = word & COUNT_MAX;
                    let next = count.checked_add(check.cost).filter(|&n| n <= COUNT_MAX)?;
                    let swapped = self.word.compare_exchange(
                        word,
                        word - count + next,
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    );
                    if swapped.is_ok() {
                        return Some(decision);
                    }
                    continue;
                }
            }
            if self.word.load(Ordering::Relaxed) == word {
                return Some(decision);
            }
        }
        None
    }
}

/// Hot windows this thread used, most recent last (a few, so that finding
/// one writes nothing shared).
const CACHED: usize = 4;

/// A hot window and what names it.
struct Cached {
    /// [`MemoryStore`](super::MemoryStore)'s id.
    store: u64,
    policy: Arc<str>,
    window: u64,
    tenant: TenantId,
    hot: Arc<HotWindow>,
}

impl Cached {
    fn names(&self, store: u64, tenant: &TenantId, check: &Check, g: Geometry) -> bool {
        self.store == store
            && self.window == g.w
            && (Arc::ptr_eq(&self.policy, &check.policy) || self.policy == check.policy)
            && self.tenant.as_str() == tenant.as_str()
    }
}

thread_local! {
    static CACHE: RefCell<Vec<Cached>> = const { RefCell::new(Vec::new()) };
}

#[cfg(test)]
thread_local! {
    /// Calls this thread decided without the lock (tests).
    pub(super) static LOCK_FREE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Without the lock: the decision of the one-check call through this
/// thread's cached hot window for the key, if any ([`HotWindow::take`]).
pub(super) fn take_cached(
    store: u64,
    tenant: &TenantId,
    check: &Check,
    g: Geometry,
    now: u64,
    commit: bool,
) -> Option<Decision> {
    CACHE
        .try_with(|cache| {
            let mut cache = cache.try_borrow_mut().ok()?;
            let i = cache
                .iter()
                .rposition(|c| c.names(store, tenant, check, g))?;
            if cache[i].hot.retired() {
                cache.remove(i);
                return None;
            }
            let decision = cache[i].hot.take(now, g, check, commit);
            #[cfg(test)]
            LOCK_FREE.with(|n| n.set(n.get() + u64::from(decision.is_some())));
            decision
        })
        .ok()
        .flatten()
}

/// Remembers `hot` as this thread's window for the key (the lock path just
/// used it), forgetting the least recently remembered one when full.
pub(super) fn remember(
    store: u64,
    tenant: &TenantId,
    check: &Check,
    g: Geometry,
    hot: &Arc<HotWindow>,
) {
    let _ = CACHE.try_with(|cache| {
        let Ok(mut cache) = cache.try_borrow_mut() else {
            return;
        };
        if let Some(i) = cache.iter().position(|c| c.names(store, tenant, check, g)) {
            if Arc::ptr_eq(&cache[i].hot, hot) {
                return;
            }
            cache.remove(i);
        } else if cache.len() >= CACHED {
            cache.remove(0);
        }
        cache.push(Cached {
            store,
            policy: check.policy.clone(),
            window: g.w,
            tenant: tenant.clone(),
            hot: hot.clone(),
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Algorithm;
    use std::time::Duration;

    fn check(limit: u64, cost: u64) -> Check {
        let window = Duration::from_millis(800);
        Check::new("p", Algorithm::SlidingWindow { window }, limit, cost)
    }

    #[test]
    fn publish_and_read_round_trip() {
        let g = Geometry::new(800);
        let now = (1u64 << 30) * g.b + 5; // an index past the word's 24 bits
        let mut state = SubBuckets::<u64>::empty(now - 3 * g.b, g);
        state.consume(now, g, 7);
        state.normalize(now, g);
        state.consume(now, g, 5);
        let hot = HotWindow::new(&state).expect("fits");
        let back = hot.begin();
        assert_eq!(back.head(), state.head());
        assert_eq!(back.counts(), state.counts());
        // Busy: the lock-free path declines.
        assert_eq!(hot.take(now, g, &check(100, 1), true), None);
        assert!(hot.publish(&back));
        let d = hot.take(now, g, &check(100, 1), true).expect("lock-free");
        assert_eq!((d.allowed, d.used), (true, 13));
        assert_eq!(hot.begin().counts().iter().sum::<u64>(), 13);
    }

    #[test]
    fn declines_rollover_overflow_and_retired() {
        let g = Geometry::new(800);
        let now = 1_000 * g.b;
        let mut state = SubBuckets::<u64>::empty(now, g);
        state.consume(now, g, COUNT_MAX - 1);
        let hot = HotWindow::new(&state).expect("fits");
        // The next bucket: a rollover, under the lock.
        assert_eq!(hot.take(now + g.b, g, &check(u64::MAX, 1), true), None);
        // One more fits the word, two do not.
        assert!(hot.take(now, g, &check(u64::MAX, 2), true).is_none());
        assert!(hot.take(now, g, &check(u64::MAX, 1), true).is_some());
        let mut full = hot.begin();
        full.consume(now, g, 1);
        assert!(!hot.publish(&full));
        hot.retire();
        assert!(hot.retired());
        assert_eq!(hot.take(now, g, &check(u64::MAX, 0), false), None);
    }
}
