//! [`ResilientStore`]: timeouts, a failure policy and a circuit breaker
//! around any [`CounterStore`].
//!
//! A shared store (Redis) can be slow or gone. The wrapper bounds every call
//! by a timeout, counts consecutive failures, and after `failures` of them
//! opens a breaker for a cool-down during which the store is not called at
//! all (so a dead store does not add a timeout to every request). After the
//! cool-down the breaker is half-open: one probe call goes to the store,
//! while the other calls are answered by the policy; a successful probe
//! closes the breaker, a failed one opens it again.
//!
//! While the store cannot answer, the [`FailurePolicy`] decides:
//!
//! * [`FailOpen`](FailurePolicy::FailOpen): admit (every decision allowed,
//!   `remaining = limit`, no lease);
//! * [`FailClosed`](FailurePolicy::FailClosed): return the [`StoreError`]
//!   (the admission layer answers 503 with `Retry-After`);
//! * [`Fallback`](FailurePolicy::Fallback): ask a local store instead
//!   (typically an in-memory store: per-instance limits, better than none).
//!
//! Transitions of the breaker are logged with `tracing` at WARN level; each
//! failure at DEBUG. A store answer that arrives after the breaker opened
//! (a call started before) closes it: the store is answering again.
//!
//! Typical wiring, Redis with a local fallback:
//!
//! ```no_run
//! # #[cfg(feature = "redis")]
//! # async fn wire() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tower_tenancy::store::{RedisStore, ResilientStore};
//! use tower_tenancy::MemoryStore;
//!
//! let store = ResilientStore::new(RedisStore::connect("redis://127.0.0.1:6379").await?)
//!     .timeout(Duration::from_millis(50))
//!     .fallback(MemoryStore::new())
//!     .breaker(5, Duration::from_secs(2));
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::{Admission, Check, CounterStore, Decision, Decisions, StoreError, StoreResult};
use crate::future::MaybeReady;
use crate::tenant::TenantId;

/// What a [`ResilientStore`] answers while its store cannot.
///
/// ```
/// use std::sync::Arc;
/// use tower_tenancy::store::{CounterStore, FailurePolicy};
///
/// let policy = FailurePolicy::FailClosed;
/// assert!(matches!(policy, FailurePolicy::FailClosed));
/// # fn fallback(local: Arc<dyn CounterStore>) -> FailurePolicy {
/// FailurePolicy::Fallback(local)
/// # }
/// ```
#[derive(Clone, Default)]
pub enum FailurePolicy {
    /// Admit every request: each decision allowed with `remaining = limit`,
    /// no lease. [`CounterStore::adjust`] still fails (there is no level to
    /// report).
    #[default]
    FailOpen,
    /// Refuse: the call returns the [`StoreError`] ([`StoreError::Timeout`],
    /// [`StoreError::Backend`] or [`StoreError::BreakerOpen`]).
    FailClosed,
    /// Ask this local store instead (for example an in-memory store).
    Fallback(Arc<dyn CounterStore>),
}

impl fmt::Debug for FailurePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailurePolicy::FailOpen => f.write_str("FailOpen"),
            FailurePolicy::FailClosed => f.write_str("FailClosed"),
            FailurePolicy::Fallback(_) => f.write_str("Fallback(..)"),
        }
    }
}

/// State of a [`ResilientStore`]'s circuit breaker.
///
/// ```
/// use tower_tenancy::store::BreakerState;
/// assert_ne!(BreakerState::Closed, BreakerState::Open);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// The store is called.
    Closed,
    /// The store failed repeatedly and is not called until the cool-down ends.
    Open,
    /// The cool-down ended: the next call (one at a time) probes the store.
    HalfOpen,
}

/// A [`CounterStore`] wrapper with a per-call timeout, a [`FailurePolicy`]
/// and a circuit breaker. See the [module documentation](self).
///
/// Defaults: timeout 100 ms, [`FailurePolicy::FailOpen`], breaker opens
/// after 5 consecutive failures for 2 s. Cloning shares the breaker.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tower_tenancy::future::MaybeReady;
/// use tower_tenancy::store::*;
/// use tower_tenancy::TenantId;
///
/// // A store that is always down.
/// struct Down;
/// impl CounterStore for Down {
///     fn admit(&self, _: &TenantId, _: &[Check]) -> MaybeReady<StoreResult<Admission>> {
///         MaybeReady::ready(Err(StoreError::Backend("connection refused".into())))
///     }
///     fn peek(&self, _: &TenantId, _: &[Check]) -> MaybeReady<StoreResult<Decisions>> {
///         MaybeReady::ready(Err(StoreError::Backend("connection refused".into())))
///     }
///     fn adjust(&self, _: &TenantId, _: &str, _: i64) -> MaybeReady<StoreResult<u64>> {
///         MaybeReady::ready(Err(StoreError::Backend("connection refused".into())))
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let store = ResilientStore::new(Down)
///     .timeout(Duration::from_millis(50))
///     .policy(FailurePolicy::FailOpen)
///     .breaker(3, Duration::from_secs(10));
/// let tenant: TenantId = "acme".parse().unwrap();
/// let checks = [Check::new("api", Algorithm::SlidingWindow { window: Duration::from_secs(60) }, 100, 1)];
/// for _ in 0..3 {
///     let admission = store.admit(&tenant, &checks).await.unwrap();
///     assert!(admission.allowed());
///     assert_eq!(admission.decisions[0].remaining, 100);
/// }
/// assert!(store.is_open());
/// # });
/// ```
pub struct ResilientStore<S> {
    store: Arc<S>,
    timeout: Duration,
    policy: FailurePolicy,
    breaker: Arc<Breaker>,
}

impl<S> Clone for ResilientStore<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            timeout: self.timeout,
            policy: self.policy.clone(),
            breaker: self.breaker.clone(),
        }
    }
}

impl<S> fmt::Debug for ResilientStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResilientStore")
            .field("timeout", &self.timeout)
            .field("policy", &self.policy)
            .field("breaker", &self.breaker.state())
            .finish()
    }
}

impl<S: CounterStore> ResilientStore<S> {
    /// Wraps `store` with the defaults (100 ms, fail-open, 5 failures → 2 s open).
    ///
    /// ```
    /// # use tower_tenancy::store::{ResilientStore, BreakerState};
    /// # struct Noop;
    /// # impl tower_tenancy::store::CounterStore for Noop {
    /// #   fn admit(&self, _: &tower_tenancy::TenantId, _: &[tower_tenancy::store::Check]) -> tower_tenancy::future::MaybeReady<tower_tenancy::store::StoreResult<tower_tenancy::store::Admission>> { unimplemented!() }
    /// #   fn peek(&self, _: &tower_tenancy::TenantId, _: &[tower_tenancy::store::Check]) -> tower_tenancy::future::MaybeReady<tower_tenancy::store::StoreResult<tower_tenancy::store::Decisions>> { unimplemented!() }
    /// #   fn adjust(&self, _: &tower_tenancy::TenantId, _: &str, _: i64) -> tower_tenancy::future::MaybeReady<tower_tenancy::store::StoreResult<u64>> { unimplemented!() }
    /// # }
    /// let store = ResilientStore::new(Noop);
    /// assert_eq!(store.breaker_state(), BreakerState::Closed);
    /// ```
    pub fn new(store: S) -> Self {
        Self {
            store: Arc::new(store),
            timeout: Duration::from_millis(100),
            policy: FailurePolicy::FailOpen,
            breaker: Arc::new(Breaker::new(5, Duration::from_secs(2))),
        }
    }

    /// Sets the longest time a store call may take; a slower call counts as
    /// a failure ([`StoreError::Timeout`]). Calls that the store answers
    /// synchronously are not timed.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_tenancy::store::ResilientStore;
    /// # fn wrap<S: tower_tenancy::store::CounterStore>(redis: S) -> ResilientStore<S> {
    /// ResilientStore::new(redis).timeout(Duration::from_millis(20))
    /// # }
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets what is answered while the store cannot.
    ///
    /// ```
    /// # use tower_tenancy::store::{FailurePolicy, ResilientStore};
    /// # fn wrap<S: tower_tenancy::store::CounterStore>(redis: S) -> ResilientStore<S> {
    /// ResilientStore::new(redis).policy(FailurePolicy::FailClosed)
    /// # }
    /// ```
    pub fn policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Shorthand for [`FailurePolicy::Fallback`] with `local`.
    ///
    /// ```
    /// # use tower_tenancy::store::{CounterStore, ResilientStore};
    /// # fn wrap<S: CounterStore, M: CounterStore>(redis: S, memory: M) -> ResilientStore<S> {
    /// ResilientStore::new(redis).fallback(memory)
    /// # }
    /// ```
    pub fn fallback(self, local: impl CounterStore) -> Self {
        self.policy(FailurePolicy::Fallback(Arc::new(local)))
    }

    /// Opens the breaker after `failures` consecutive failures (at least 1)
    /// for `cool_down`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_tenancy::store::ResilientStore;
    /// # fn wrap<S: tower_tenancy::store::CounterStore>(redis: S) -> ResilientStore<S> {
    /// ResilientStore::new(redis).breaker(10, Duration::from_secs(5))
    /// # }
    /// ```
    pub fn breaker(mut self, failures: u32, cool_down: Duration) -> Self {
        self.breaker = Arc::new(Breaker::new(failures.max(1), cool_down));
        self
    }

    /// The wrapped store.
    ///
    /// ```
    /// # use tower_tenancy::store::ResilientStore;
    /// # fn inner<S: tower_tenancy::store::CounterStore>(s: &ResilientStore<S>) -> &S {
    /// s.inner()
    /// # }
    /// ```
    pub fn inner(&self) -> &S {
        &self.store
    }

    /// Whether the breaker is open (the store is not being called; a
    /// half-open breaker counts as open until its probe succeeds).
    ///
    /// ```
    /// # use tower_tenancy::store::ResilientStore;
    /// # fn check<S: tower_tenancy::store::CounterStore>(s: &ResilientStore<S>) {
    /// if s.is_open() {
    ///     // report the store as degraded
    /// }
    /// # }
    /// ```
    pub fn is_open(&self) -> bool {
        self.breaker_state() != BreakerState::Closed
    }

    /// The breaker's state now (an open breaker whose cool-down has ended
    /// reports [`BreakerState::HalfOpen`]).
    ///
    /// ```
    /// # use tower_tenancy::store::{BreakerState, ResilientStore};
    /// # fn check<S: tower_tenancy::store::CounterStore>(s: &ResilientStore<S>) {
    /// let closed = s.breaker_state() == BreakerState::Closed;
    /// # }
    /// ```
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Runs one store call under the breaker and the timeout; on failure
    /// answers with `fail(error)`.
    fn guarded<T: Send + 'static>(
        &self,
        call: MaybeReady<StoreResult<T>>,
        fail: impl FnOnce(StoreError) -> MaybeReady<StoreResult<T>> + Send + 'static,
    ) -> MaybeReady<StoreResult<T>> {
        let mut call = call;
        // Synchronous answers (an in-memory store) need no timer.
        if let Some(result) = call.try_take() {
            return match result {
                Ok(value) => {
                    self.breaker.success();
                    MaybeReady::ready(Ok(value))
                }
                Err(error) => {
                    self.breaker.failure();
                    fail(error)
                }
            };
        }
        let timeout = self.timeout;
        // Created outside the future so that dropping it unpolled counts too.
        let probe = ProbeGuard(Some(self.breaker.clone()));
        MaybeReady::boxed(async move {
            let mut probe = probe;
            let result = match tokio::time::timeout(timeout, call).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Timeout),
            };
            let breaker = probe.0.take().expect("set above");
            match result {
                Ok(value) => {
                    breaker.success();
                    Ok(value)
                }
                Err(error) => {
                    breaker.failure();
                    fail(error).await
                }
            }
        })
    }
}

impl<S: CounterStore> CounterStore for ResilientStore<S> {
    fn admit(&self, tenant: &TenantId, checks: &[Check]) -> MaybeReady<StoreResult<Admission>> {
        let on_failure = OnFailure::new(&self.policy, tenant, checks);
        let fail = move |error| match on_failure.answer(error) {
            Answer::Open(decisions) => MaybeReady::ready(Ok(Admission::new(decisions, None))),
            Answer::Error(error) => MaybeReady::ready(Err(error)),
            Answer::Ask(local, tenant, checks) => local.admit(&tenant, &checks),
        };
        if !self.breaker.try_acquire() {
            return fail(StoreError::BreakerOpen);
        }
        self.guarded(self.store.admit(tenant, checks), fail)
    }

    fn peek(&self, tenant: &TenantId, checks: &[Check]) -> MaybeReady<StoreResult<Decisions>> {
        let on_failure = OnFailure::new(&self.policy, tenant, checks);
        let fail = move |error| match on_failure.answer(error) {
            Answer::Open(decisions) => MaybeReady::ready(Ok(decisions)),
            Answer::Error(error) => MaybeReady::ready(Err(error)),
            Answer::Ask(local, tenant, checks) => local.peek(&tenant, &checks),
        };
        if !self.breaker.try_acquire() {
            return fail(StoreError::BreakerOpen);
        }
        self.guarded(self.store.peek(tenant, checks), fail)
    }

    fn adjust(&self, tenant: &TenantId, policy: &str, delta: i64) -> MaybeReady<StoreResult<u64>> {
        let local = match &self.policy {
            FailurePolicy::Fallback(local) => {
                Some((local.clone(), tenant.clone(), policy.to_owned()))
            }
            _ => None,
        };
        let fail = move |error: StoreError| {
            tracing::debug!(%error, "counter store failed; applying the failure policy to adjust");
            match local {
                Some((local, tenant, policy)) => local.adjust(&tenant, &policy, delta),
                None => MaybeReady::ready(Err(error)),
            }
        };
        if !self.breaker.try_acquire() {
            return fail(StoreError::BreakerOpen);
        }
        self.guarded(self.store.adjust(tenant, policy, delta), fail)
    }
}

/// What the failure policy needs to answer one call, captured up front
/// (the store's future must be `'static`).
enum OnFailure {
    Open(Vec<u64>),
    Closed,
    Fallback(Arc<dyn CounterStore>, TenantId, Arc<[Check]>),
}

#[allow(clippy::large_enum_variant)] // a cold path, answered once
enum Answer {
    Open(Decisions),
    Error(StoreError),
    Ask(Arc<dyn CounterStore>, TenantId, Arc<[Check]>),
}

impl OnFailure {
    fn new(policy: &FailurePolicy, tenant: &TenantId, checks: &[Check]) -> Self {
        match policy {
            FailurePolicy::FailOpen => OnFailure::Open(checks.iter().map(|c| c.limit).collect()),
            FailurePolicy::FailClosed => OnFailure::Closed,
            FailurePolicy::Fallback(local) => {
                OnFailure::Fallback(local.clone(), tenant.clone(), checks.into())
            }
        }
    }

    fn answer(self, error: StoreError) -> Answer {
        tracing::debug!(%error, "counter store failed; applying the failure policy");
        match self {
            // Every check allowed, nothing used.
            OnFailure::Open(limits) => Answer::Open(
                limits
                    .into_iter()
                    .map(|limit| Decision {
                        allowed: true,
                        limit,
                        used: 0,
                        remaining: limit,
                        reset: Duration::ZERO,
                        retry_after: None,
                    })
                    .collect(),
            ),
            OnFailure::Closed => Answer::Error(error),
            OnFailure::Fallback(local, tenant, checks) => Answer::Ask(local, tenant, checks),
        }
    }
}

/// Marks an abandoned call (its future dropped before an answer, e.g. the
/// client went away) so that a half-open breaker can probe again.
struct ProbeGuard(Option<Arc<Breaker>>);

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if let Some(breaker) = self.0.take() {
            breaker.abandoned();
        }
    }
}

struct Breaker {
    threshold: u32,
    cool_down: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

impl Breaker {
    fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            threshold,
            cool_down,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn state(&self) -> BreakerState {
        match *self.state.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if Instant::now() < until => BreakerState::Open,
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether this call may go to the store.
    fn try_acquire(&self) -> bool {
        let mut state = self.state.lock();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } => {
                if Instant::now() < until {
                    false
                } else {
                    *state = State::HalfOpen { probing: true };
                    tracing::warn!("counter store breaker half-open: probing the store");
                    true
                }
            }
            State::HalfOpen { probing: true } => false,
            State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                true
            }
        }
    }

    fn success(&self) {
        let mut state = self.state.lock();
        match *state {
            State::Closed { failures: 0 } => {}
            State::Closed { .. } => *state = State::Closed { failures: 0 },
            State::HalfOpen { .. } | State::Open { .. } => {
                *state = State::Closed { failures: 0 };
                tracing::warn!("counter store breaker closed: the store answers again");
            }
        }
    }

    fn failure(&self) {
        let mut state = self.state.lock();
        match *state {
            State::Closed { failures } => {
                let failures = failures + 1;
                if failures >= self.threshold {
                    *state = State::Open {
                        until: Instant::now() + self.cool_down,
                    };
                    tracing::warn!(
                        failures,
                        cool_down_ms = self.cool_down.as_millis() as u64,
                        "counter store breaker open: the store is not called during the cool-down"
                    );
                } else {
                    *state = State::Closed { failures };
                }
            }
            State::HalfOpen { .. } => {
                *state = State::Open {
                    until: Instant::now() + self.cool_down,
                };
                tracing::warn!(
                    cool_down_ms = self.cool_down.as_millis() as u64,
                    "counter store breaker open again: the probe failed"
                );
            }
            // A call started before the breaker opened: already open.
            State::Open { .. } => {}
        }
    }

    fn abandoned(&self) {
        let mut state = self.state.lock();
        if let State::HalfOpen { probing: true } = *state {
            *state = State::HalfOpen { probing: false };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Algorithm, Lease};
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    /// A store that fails or hangs while `down` is set, and counts calls.
    #[derive(Default)]
    struct Flaky {
        down: AtomicBool,
        hang: AtomicBool,
        calls: AtomicU32,
    }

    impl CounterStore for Flaky {
        fn admit(&self, _: &TenantId, checks: &[Check]) -> MaybeReady<StoreResult<Admission>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let decisions: Decisions = checks
                .iter()
                .map(|c| Decision {
                    allowed: true,
                    limit: c.limit,
                    used: 7,
                    remaining: c.limit - 7,
                    reset: Duration::ZERO,
                    retry_after: None,
                })
                .collect();
            if self.hang.load(Ordering::SeqCst) {
                return MaybeReady::boxed(std::future::pending());
            }
            let down = self.down.load(Ordering::SeqCst);
            MaybeReady::boxed(async move {
                if down {
                    Err(StoreError::Backend("refused".into()))
                } else {
                    Ok(Admission::new(decisions, Some(Lease::new(|| {}))))
                }
            })
        }
        fn peek(&self, _: &TenantId, _: &[Check]) -> MaybeReady<StoreResult<Decisions>> {
            MaybeReady::ready(Ok(Decisions::new()))
        }
        fn adjust(&self, _: &TenantId, _: &str, _: i64) -> MaybeReady<StoreResult<u64>> {
            if self.down.load(Ordering::SeqCst) {
                MaybeReady::ready(Err(StoreError::Backend("refused".into())))
            } else {
                MaybeReady::ready(Ok(3))
            }
        }
    }

    fn checks() -> Vec<Check> {
        vec![Check::new(
            "p",
            Algorithm::SlidingWindow {
                window: Duration::from_secs(1),
            },
            10,
            1,
        )]
    }

    fn tenant() -> TenantId {
        "acme".parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_half_opens_and_closes() {
        let flaky = Arc::new(Flaky::default());
        let store = ResilientStore::new(flaky.clone())
            .timeout(Duration::from_millis(50))
            .policy(FailurePolicy::FailClosed)
            .breaker(3, Duration::from_secs(1));
        flaky.down.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            let err = store.admit(&tenant(), &checks()).await.unwrap_err();
            assert!(matches!(err, StoreError::Backend(_)));
        }
        assert!(store.is_open());
        assert_eq!(store.breaker_state(), BreakerState::Open);
        let err = store.admit(&tenant(), &checks()).await.unwrap_err();
        assert!(matches!(err, StoreError::BreakerOpen));
        assert_eq!(
            flaky.calls.load(Ordering::SeqCst),
            3,
            "open breaker calls nothing"
        );

        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(store.breaker_state(), BreakerState::HalfOpen);
        // Failed probe: open again.
        assert!(store.admit(&tenant(), &checks()).await.is_err());
        assert_eq!(store.breaker_state(), BreakerState::Open);
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 4);

        tokio::time::advance(Duration::from_millis(1001)).await;
        flaky.down.store(false, Ordering::SeqCst);
        let admission = store.admit(&tenant(), &checks()).await.unwrap();
        assert_eq!(admission.decisions[0].used, 7);
        assert_eq!(store.breaker_state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_count_as_failures_and_fail_open_admits() {
        let flaky = Arc::new(Flaky::default());
        let store = ResilientStore::new(flaky.clone())
            .timeout(Duration::from_millis(50))
            .breaker(2, Duration::from_secs(1));
        flaky.hang.store(true, Ordering::SeqCst);
        let start = Instant::now();
        let admission = store.admit(&tenant(), &checks()).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(50));
        assert!(admission.allowed());
        assert!(admission.lease.is_none());
        assert_eq!(admission.decisions[0].remaining, 10);
        assert_eq!(admission.decisions[0].used, 0);
        assert!(!store.is_open());
        store.admit(&tenant(), &checks()).await.unwrap();
        assert!(store.is_open());
        // Adjust has no open answer.
        assert!(matches!(
            store.adjust(&tenant(), "g", 1).await,
            Err(StoreError::BreakerOpen)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_one_probe_through() {
        let flaky = Arc::new(Flaky::default());
        let store = ResilientStore::new(flaky.clone())
            .timeout(Duration::from_millis(50))
            .policy(FailurePolicy::FailClosed)
            .breaker(1, Duration::from_secs(1));
        flaky.down.store(true, Ordering::SeqCst);
        assert!(store.admit(&tenant(), &checks()).await.is_err());
        assert!(store.is_open());
        tokio::time::advance(Duration::from_millis(1001)).await;
        flaky.down.store(false, Ordering::SeqCst);
        flaky.hang.store(true, Ordering::SeqCst);
        let probe = store.admit(&tenant(), &checks());
        // While the probe is out, other calls get the policy's answer.
        assert!(matches!(
            store.admit(&tenant(), &checks()).await,
            Err(StoreError::BreakerOpen)
        ));
        // The probe is abandoned: the next call probes again.
        drop(probe);
        flaky.hang.store(false, Ordering::SeqCst);
        assert!(store.admit(&tenant(), &checks()).await.is_ok());
        assert!(!store.is_open());
    }

    #[tokio::test]
    async fn fallback_answers_while_down() {
        let flaky = Arc::new(Flaky::default());
        let local = Arc::new(Flaky::default());
        let store = ResilientStore::new(flaky.clone()).fallback(local.clone());
        flaky.down.store(true, Ordering::SeqCst);
        let admission = store.admit(&tenant(), &checks()).await.unwrap();
        assert!(admission.lease.is_some(), "the fallback's answer");
        assert_eq!(local.calls.load(Ordering::SeqCst), 1);
        assert_eq!(store.adjust(&tenant(), "g", 1).await.unwrap(), 3);
    }
}
