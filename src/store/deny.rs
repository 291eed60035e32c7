//! [`DenyCache`]: refuse locally what the store just refused, until its
//! `Retry-After`.
//!
//! A tenant over its rate or quota that keeps sending costs one store call
//! (one Redis script) per request. When the wrapped store denies a
//! **rate** (sliding windows, sliding log, GCRA) or **quota** (calendar) check with
//! `retry_after = R`, the cache remembers "this tenant, this policy, this
//! algorithm and limit: refused for a cost ≥ `c` until `sent + R`", where
//! `sent` is when the call was made. Until then every batch holding that
//! check with a cost ≥ `c` is refused here, without calling the store.
//!
//! **Exactness.** A rate or quota counter only grows by admissions and
//! shrinks with time, and `retry_after` is the earliest time the same
//! request could pass if nothing else were admitted; the store's clock
//! computed it at or after `sent`, so `sent + R` is never later than the
//! store's own answer: nothing is over-admitted (the cache only refuses),
//! and a request is never refused longer than the store would (error bound:
//! a request arriving between `sent + R` and the store's `now + R` — at most
//! one round trip — goes to the store, which refuses it). Concurrency and
//! gauge checks are never cached (a release or an `adjust` frees them at
//! any time).
//!
//! **Plan changes.** The key holds the limit and the algorithm's window or
//! period, so a raised limit, another plan or an override takes effect on
//! the next request. [`CounterStore::invalidate`] (for example from
//! [`MemoryDirectory::on_change`](crate::MemoryDirectory::on_change)) drops
//! a tenant's entries at once, [`CounterStore::invalidate_all`] all of them
//! (say after counters were reset by hand).
//!
//! **Memory.** At most `capacity` entries (4 096 by default) in 16 shards,
//! each a small map behind its own lock; a full shard drops its expired
//! entries, then the one expiring first. An entry is about 100 bytes plus
//! the map's overhead.
//!
//! **Answers.** A local refusal carries, for the cached check, the store's
//! decision (`used`, `remaining`, `reset` less the time since) with
//! `retry_after` = the time left; the batch's other checks were not asked
//! and report `allowed` with `used = 0`, `remaining = limit`, `reset = 0`.
//! [`peek`](CounterStore::peek) and [`adjust`](CounterStore::adjust) always
//! go to the store.
//!
//! ```
//! use std::time::Duration;
//! use tower_tenancy::store::{Algorithm, Check, CounterStore, DenyCache};
//! use tower_tenancy::MemoryStore;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let store = DenyCache::new(MemoryStore::new());
//! let acme = "acme".parse().unwrap();
//! let rate = [Check::new("api", Algorithm::SlidingLog { window: Duration::from_secs(60) }, 1, 1)];
//! assert!(store.admit(&acme, &rate).await.unwrap().allowed());
//! assert!(!store.admit(&acme, &rate).await.unwrap().allowed()); // the store refused
//! assert!(!store.admit(&acme, &rate).await.unwrap().allowed()); // refused here
//! assert_eq!(store.local_refusals(), 1);
//! # });
//! ```

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use smallvec::SmallVec;
use tokio::time::Instant;

use super::{Admission, Algorithm, Check, CounterStore, Decision, Decisions, StoreResult};
use crate::future::MaybeReady;
use crate::tenant::TenantId;

const SHARDS: usize = 16;

/// A [`CounterStore`] wrapper that refuses locally, until their
/// `Retry-After`, the rate and quota checks its store just refused. See the
/// [module documentation](self).
///
/// Cloning shares the cache.
pub struct DenyCache<S> {
    store: S,
    cache: Arc<Cache>,
}

impl<S: Clone> Clone for DenyCache<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            cache: self.cache.clone(),
        }
    }
}

impl<S> std::fmt::Debug for DenyCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenyCache")
            .field("entries", &self.cache.len.load(Ordering::Relaxed))
            .field("capacity", &self.cache.per_shard.saturating_mul(SHARDS))
            .finish()
    }
}

struct Cache {
    shards: [Mutex<HashMap<u64, Entry>>; SHARDS],
    len: AtomicUsize,
    per_shard: usize,
    hasher: foldhash::fast::RandomState,
    refusals: AtomicU64,
}

/// One refused check.
struct Entry {
    tenant: TenantId,
    policy: Arc<str>,
    algorithm: Algorithm,
    limit: u64,
    /// Refused for this cost and above.
    cost: u64,
    sent: Instant,
    until: Instant,
    decision: Decision,
}

impl Entry {
    fn matches(&self, tenant: &TenantId, check: &Check) -> bool {
        self.tenant == *tenant
            && *self.policy == *check.policy
            && self.algorithm == check.algorithm
            && self.limit == check.limit
    }
}

/// Whether a check's denial may be cached.
fn cacheable(algorithm: &Algorithm) -> bool {
    matches!(
        algorithm,
        Algorithm::SlidingWindow { .. }
            | Algorithm::SlidingWindowApprox { .. }
            | Algorithm::SlidingLog { .. }
            | Algorithm::Gcra { .. }
            | Algorithm::Calendar { .. }
    )
}

impl<S: CounterStore> DenyCache<S> {
    /// Wraps `store` with room for 4 096 refusals.
    ///
    /// ```
    /// # use tower_tenancy::store::DenyCache;
    /// let store = DenyCache::new(tower_tenancy::MemoryStore::new());
    /// ```
    pub fn new(store: S) -> Self {
        Self::with_capacity(store, 4096)
    }

    /// Wraps `store` with room for about `capacity` refusals (rounded up to
    /// a multiple of 16, at least 16).
    ///
    /// ```
    /// # use tower_tenancy::store::DenyCache;
    /// let store = DenyCache::with_capacity(tower_tenancy::MemoryStore::new(), 100_000);
    /// ```
    pub fn with_capacity(store: S, capacity: usize) -> Self {
        Self {
            store,
            cache: Arc::new(Cache {
                shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
                len: AtomicUsize::new(0),
                per_shard: capacity.div_ceil(SHARDS).max(1),
                hasher: foldhash::fast::RandomState::default(),
                refusals: AtomicU64::new(0),
            }),
        }
    }

    /// The wrapped store.
    ///
    /// ```
    /// # use tower_tenancy::store::DenyCache;
    /// # let store = DenyCache::new(tower_tenancy::MemoryStore::new());
    /// let memory: &tower_tenancy::MemoryStore = store.inner();
    /// ```
    pub fn inner(&self) -> &S {
        &self.store
    }

    /// Requests refused here without calling the store, since creation.
    ///
    /// ```
    /// # use tower_tenancy::store::DenyCache;
    /// # let store = DenyCache::new(tower_tenancy::MemoryStore::new());
    /// assert_eq!(store.local_refusals(), 0);
    /// ```
    pub fn local_refusals(&self) -> u64 {
        self.cache.refusals.load(Ordering::Relaxed)
    }

    /// Refusals held now (expired ones included until they are dropped).
    ///
    /// ```
    /// # use tower_tenancy::store::DenyCache;
    /// # let store = DenyCache::new(tower_tenancy::MemoryStore::new());
    /// assert_eq!(store.len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.cache.len.load(Ordering::Relaxed)
    }

    /// Whether no refusal is held.
    ///
    /// ```
    /// # use tower_tenancy::store::DenyCache;
    /// # let store = DenyCache::new(tower_tenancy::MemoryStore::new());
    /// assert!(store.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Cache {
    fn key(&self, tenant: &TenantId, check: &Check) -> u64 {
        let mut h = self.hasher.build_hasher();
        tenant.as_str().hash(&mut h);
        check.policy.hash(&mut h);
        check.algorithm.hash(&mut h);
        check.limit.hash(&mut h);
        h.finish()
    }

    fn shard(&self, key: u64) -> &Mutex<HashMap<u64, Entry>> {
        &self.shards[(key >> 60) as usize % SHARDS]
    }

    /// The local refusal of this batch, if one of its checks is refused.
    fn refusal(&self, tenant: &TenantId, checks: &[Check]) -> Option<Decisions> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let now = Instant::now();
        for (i, check) in checks.iter().enumerate() {
            // A shadowed check refuses nothing: the store must still count
            // the request (its enforced checks consume).
            if check.shadow || !cacheable(&check.algorithm) {
                continue;
            }
            let key = self.key(tenant, check);
            let mut shard = self.shard(key).lock();
            let Some(entry) = shard.get(&key) else {
                continue;
            };
            if !entry.matches(tenant, check) {
                continue;
            }
            if now >= entry.until {
                shard.remove(&key);
                self.len.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            if check.cost < entry.cost {
                continue;
            }
            let refused = Decision {
                allowed: false,
                reset: entry
                    .decision
                    .reset
                    .saturating_sub(now.saturating_duration_since(entry.sent)),
                retry_after: Some(entry.until - now),
                ..entry.decision
            };
            drop(shard);
            self.refusals.fetch_add(1, Ordering::Relaxed);
            return Some(
                checks
                    .iter()
                    .enumerate()
                    .map(|(j, c)| {
                        if j == i {
                            refused
                        } else {
                            Decision {
                                allowed: true,
                                limit: c.limit,
                                used: 0,
                                remaining: c.limit,
                                reset: Duration::ZERO,
                                retry_after: None,
                            }
                        }
                    })
                    .collect(),
            );
        }
        None
    }

    /// Remembers the refused rate and quota checks of a store's answer.
    fn remember(&self, tenant: &TenantId, asked: &[Asked], sent: Instant, decisions: &[Decision]) {
        for (check, decision) in asked.iter().zip(decisions) {
            let Some(after) = decision.retry_after else {
                continue;
            };
            if decision.allowed || after.is_zero() || check.check.shadow {
                continue;
            }
            let key = self.key(tenant, &check.check);
            let entry = Entry {
                tenant: tenant.clone(),
                policy: check.check.policy.clone(),
                algorithm: check.check.algorithm,
                limit: check.check.limit,
                cost: check.check.cost,
                sent,
                until: sent + after,
                decision: *decision,
            };
            let mut shard = self.shard(key).lock();
            if shard.len() >= self.per_shard && !shard.contains_key(&key) {
                let now = Instant::now();
                let before = shard.len();
                shard.retain(|_, e| e.until > now);
                if shard.len() >= self.per_shard {
                    if let Some(first) = shard.iter().min_by_key(|(_, e)| e.until).map(|(k, _)| *k)
                    {
                        shard.remove(&first);
                    }
                }
                self.len.fetch_sub(before - shard.len(), Ordering::Relaxed);
            }
            if shard.insert(key, entry).is_none() {
                self.len.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn forget(&self, tenant: Option<&TenantId>) {
        for shard in &self.shards {
            let mut shard = shard.lock();
            let before = shard.len();
            match tenant {
                Some(t) => shard.retain(|_, e| e.tenant != *t),
                None => shard.clear(),
            }
            self.len.fetch_sub(before - shard.len(), Ordering::Relaxed);
        }
    }
}

/// A check as asked, kept for the answer (only the cacheable ones).
struct Asked {
    index: usize,
    check: Check,
}

impl<S: CounterStore> CounterStore for DenyCache<S> {
    fn admit(&self, tenant: &TenantId, checks: &[Check]) -> MaybeReady<StoreResult<Admission>> {
        if let Some(decisions) = self.cache.refusal(tenant, checks) {
            return MaybeReady::ready(Ok(Admission::new(decisions, None)));
        }
        let sent = Instant::now();
        let mut call = self.store.admit(tenant, checks);
        if !checks.iter().any(|c| cacheable(&c.algorithm)) {
            return call;
        }
        if let Some(result) = call.try_take() {
            if let Ok(admission) = &result {
                if !admission.allowed() {
                    let asked = asked(checks);
                    let decisions = pick(&asked, &admission.decisions);
                    self.cache.remember(tenant, &asked, sent, &decisions);
                }
            }
            return MaybeReady::ready(result);
        }
        let cache = self.cache.clone();
        let tenant = tenant.clone();
        let asked = asked(checks);
        MaybeReady::boxed(async move {
            let result = call.await;
            if let Ok(admission) = &result {
                if !admission.allowed() {
                    let decisions = pick(&asked, &admission.decisions);
                    cache.remember(&tenant, &asked, sent, &decisions);
                }
            }
            result
        })
    }

    fn peek(&self, tenant: &TenantId, checks: &[Check]) -> MaybeReady<StoreResult<Decisions>> {
        self.store.peek(tenant, checks)
    }

    fn adjust(&self, tenant: &TenantId, policy: &str, delta: i64) -> MaybeReady<StoreResult<u64>> {
        self.store.adjust(tenant, policy, delta)
    }

    fn invalidate(&self, tenant: &TenantId) {
        self.cache.forget(Some(tenant));
        self.store.invalidate(tenant);
    }

    fn invalidate_all(&self) {
        self.cache.forget(None);
        self.store.invalidate_all();
    }
}

fn asked(checks: &[Check]) -> SmallVec<[Asked; 4]> {
    checks
        .iter()
        .enumerate()
        .filter(|(_, c)| cacheable(&c.algorithm))
        .map(|(index, c)| Asked {
            index,
            check: c.clone(),
        })
        .collect()
}

/// The decisions of the asked checks, in their order.
fn pick(asked: &[Asked], decisions: &[Decision]) -> SmallVec<[Decision; 4]> {
    asked
        .iter()
        .filter_map(|a| decisions.get(a.index).copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Period;
    use crate::store::{ManualClock, MemoryStore};

    fn log(limit: u64, cost: u64) -> Check {
        Check::new(
            "api",
            Algorithm::SlidingLog {
                window: Duration::from_secs(60),
            },
            limit,
            cost,
        )
    }

    fn acme() -> TenantId {
        "acme".parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn refuses_locally_until_retry_after_then_asks_again() {
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let memory = MemoryStore::builder().clock(clock.clone()).build();
        let store = DenyCache::new(memory);
        assert!(store.admit(&acme(), &[log(2, 1)]).await.unwrap().allowed());
        assert!(store.admit(&acme(), &[log(2, 1)]).await.unwrap().allowed());
        let refused = store.admit(&acme(), &[log(2, 1)]).await.unwrap();
        assert_eq!(
            refused.decisions[0].retry_after,
            Some(Duration::from_secs(60))
        );
        assert_eq!(store.len(), 1);
        tokio::time::advance(Duration::from_secs(20)).await;
        let local = store.admit(&acme(), &[log(2, 1)]).await.unwrap();
        assert!(!local.allowed());
        assert_eq!(
            local.decisions[0].retry_after,
            Some(Duration::from_secs(40))
        );
        assert_eq!(local.decisions[0].used, 2);
        assert_eq!(store.local_refusals(), 1);
        // A smaller cost, another limit: the store is asked.
        assert!(store.admit(&acme(), &[log(3, 1)]).await.unwrap().allowed());
        // Once the time is up, the store again.
        tokio::time::advance(Duration::from_secs(40)).await;
        clock.advance_ms(60_001);
        assert!(store.admit(&acme(), &[log(2, 1)]).await.unwrap().allowed());
        assert_eq!(store.local_refusals(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn other_checks_and_costs() {
        let store = DenyCache::new(MemoryStore::new());
        let quota = Check::new(
            "q",
            Algorithm::Calendar {
                period: Period::Day,
            },
            1,
            1,
        );
        let conc = Check::new(
            "c",
            Algorithm::Concurrency {
                lease_ttl: Duration::from_secs(60),
            },
            1,
            1,
        );
        let held = store
            .admit(&acme(), std::slice::from_ref(&conc))
            .await
            .unwrap();
        assert!(!store
            .admit(&acme(), std::slice::from_ref(&conc))
            .await
            .unwrap()
            .allowed());
        assert!(store.is_empty(), "concurrency is never cached");
        drop(held);
        assert!(store
            .admit(&acme(), std::slice::from_ref(&conc))
            .await
            .unwrap()
            .allowed());

        assert!(store
            .admit(&acme(), std::slice::from_ref(&quota))
            .await
            .unwrap()
            .allowed());
        let mut big = quota.clone();
        big.cost = 1;
        assert!(!store
            .admit(&acme(), &[big, conc.clone()])
            .await
            .unwrap()
            .allowed());
        assert_eq!(store.len(), 1);
        // The batch with the refused quota is refused here; the
        // concurrency check was not asked.
        let local = store
            .admit(&acme(), &[conc.clone(), quota.clone()])
            .await
            .unwrap();
        assert!(!local.allowed());
        assert!(local.lease.is_none());
        assert!(local.decisions[0].allowed);
        assert!(!local.decisions[1].allowed);
        assert_eq!(store.local_refusals(), 1);
        // A cost of 0 is below the refused cost: asked.
        let mut free = quota.clone();
        free.cost = 0;
        assert!(store.admit(&acme(), &[free]).await.unwrap().allowed());
        assert_eq!(store.local_refusals(), 1);
        // Invalidation drops it.
        store.invalidate(&acme());
        assert!(store.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn bounded() {
        let store = DenyCache::with_capacity(MemoryStore::new(), 32);
        for i in 0..200 {
            let t: TenantId = format!("t{i}").parse().unwrap();
            assert!(store.admit(&t, &[log(1, 1)]).await.unwrap().allowed());
            assert!(!store.admit(&t, &[log(1, 1)]).await.unwrap().allowed());
        }
        assert!(store.len() <= 32, "{}", store.len());
        store.invalidate_all();
        assert!(store.is_empty());
    }
}
