//! The circuit breaker of a [`ResilientStore`](crate::store::ResilientStore):
//! it tells an outage from a hiccup.
//!
//! A breaker is **closed** (the store is called), **open** (the store is not
//! called; the failure policy answers) or **half-open** (the cool-down is
//! over: one probe call goes to the store, the others get the policy's
//! answer; a successful probe closes the breaker, a failed one opens it
//! again). A closed breaker opens on either rule:
//!
//! * **outage**: the last `consecutive_failures` calls (3) failed, and the
//!   oldest of them was started at least `silence` ago (2 × the store
//!   timeout by default): the store has answered nothing for that long. A
//!   dead or frozen store opens the breaker about `silence` after it stopped
//!   answering; a few calls that miss the timeout while the machine is busy,
//!   with answers in between, open nothing.
//! * **failure rate**: over the rolling `interval` (10 s), at least
//!   `minimum_calls` calls (20) were made and `failures × 100 ≥
//!   failure_rate × calls` (50 %): a store that fails every other call.
//!
//! The rolling interval is counted in 10 buckets of `interval / 10`: a call
//! is forgotten between `interval × 9/10` and `interval` after it ended (the
//! error bound of the rate rule). An open breaker stays open for its
//! cool-down, then half-opens: `cool_down` (250 ms) the first time, doubled
//! after each failed probe up to `max_cool_down` (1 s), back to `cool_down`
//! once a probe succeeds. A stall just long enough to open it costs a
//! quarter of a second of refusals; a store that stays down is probed once a
//! second. Answers of calls started before the breaker opened are ignored
//! while it is open; when it closes, the counts start afresh.
//!
//! The model is the count- and time-based breakers of resilience4j (with
//! its exponential wait in the open state) and Envoy's outlier detection
//! (consecutive gateway failures + success rate; an ejection time that
//! grows with each ejection, up to a maximum).
//! Transitions are logged with `tracing` at WARN level and, with the
//! `metrics` feature, reported as the gauge
//! `tenancy_store_breaker_state{partition}` (0 closed, 1 half-open, 2 open)
//! and the counter `tenancy_store_breaker_opened_total{partition}`.
//!
//! ```
//! use std::time::Duration;
//! use tower_tenancy::store::BreakerConfig;
//!
//! // Open after 5 failures in a row spanning 300 ms, or 25 % of at least
//! // 50 calls over 30 s; probe again after 2 s, then 4 s, 8 s, 10 s, 10 s…
//! let config = BreakerConfig::new()
//!     .consecutive_failures(5)
//!     .silence(Duration::from_millis(300))
//!     .failure_rate(25)
//!     .minimum_calls(50)
//!     .interval(Duration::from_secs(30))
//!     .cool_down(Duration::from_secs(2))
//!     .max_cool_down(Duration::from_secs(10));
//! # let _ = config;
//! ```

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// State of a circuit breaker.
///
/// ```
/// use tower_tenancy::store::BreakerState;
/// assert_ne!(BreakerState::Closed, BreakerState::Open);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// The store is called.
    Closed,
    /// The store failed and is not called until the cool-down ends.
    Open,
    /// The cool-down ended: the next call (one at a time) probes the store.
    HalfOpen,
}

impl BreakerState {
    /// The value of the `tenancy_store_breaker_state` gauge: 0 closed,
    /// 1 half-open, 2 open.
    ///
    /// ```
    /// use tower_tenancy::store::BreakerState;
    /// assert_eq!(BreakerState::Open.gauge(), 2.0);
    /// ```
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

/// When a breaker opens and how long it stays open. See the
/// [module documentation](self) for the rules.
///
/// Defaults: 3 consecutive failures spanning 2 × the store timeout, or
/// 50 % of at least 20 calls over 10 s; cool-down 250 ms, doubled after each
/// failed probe up to 1 s.
///
/// ```
/// use std::time::Duration;
/// use tower_tenancy::store::{BreakerConfig, ResilientStore};
/// # fn wrap<S: tower_tenancy::store::CounterStore>(redis: S) -> ResilientStore<S> {
/// ResilientStore::new(redis).breaker_config(BreakerConfig::new().cool_down(Duration::from_secs(2)))
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct BreakerConfig {
    pub(crate) consecutive_failures: u32,
    pub(crate) silence: Option<Duration>,
    pub(crate) failure_rate: u8,
    pub(crate) minimum_calls: u32,
    pub(crate) interval: Duration,
    pub(crate) cool_down: Duration,
    pub(crate) max_cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 3,
            silence: None,
            failure_rate: 50,
            minimum_calls: 20,
            interval: Duration::from_secs(10),
            cool_down: Duration::from_millis(250),
            max_cool_down: Duration::from_secs(1),
        }
    }
}

impl BreakerConfig {
    /// The defaults.
    ///
    /// ```
    /// # use tower_tenancy::store::BreakerConfig;
    /// assert_eq!(BreakerConfig::new(), BreakerConfig::default());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Outage rule: how many failures in a row (at least 1).
    ///
    /// ```
    /// # use tower_tenancy::store::BreakerConfig;
    /// let config = BreakerConfig::new().consecutive_failures(5);
    /// # let _ = config;
    /// ```
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = n.max(1);
        self
    }

    /// Outage rule: how long ago the oldest of those failed calls must have
    /// started (default: 2 × the [`ResilientStore`](crate::store::ResilientStore)'s
    /// timeout). `Duration::ZERO` opens on the failures alone.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_tenancy::store::BreakerConfig;
    /// let config = BreakerConfig::new().silence(Duration::from_millis(250));
    /// # let _ = config;
    /// ```
    pub fn silence(mut self, silence: Duration) -> Self {
        self.silence = Some(silence);
        self
    }

    /// Failure-rate rule: the share of failed calls, in percent (1–100),
    /// at or above which the breaker opens.
    ///
    /// ```
    /// # use tower_tenancy::store::BreakerConfig;
    /// let config = BreakerConfig::new().failure_rate(80);
    /// # let _ = config;
    /// ```
    pub fn failure_rate(mut self, percent: u8) -> Self {
        self.failure_rate = percent.clamp(1, 100);
        self
    }

    /// Failure-rate rule: the fewest calls in the interval for the rate to
    /// count (at least 1).
    ///
    /// ```
    /// # use tower_tenancy::store::BreakerConfig;
    /// let config = BreakerConfig::new().minimum_calls(100);
    /// # let _ = config;
    /// ```
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.minimum_calls = n.max(1);
        self
    }

    /// Failure-rate rule: the rolling interval (at least 10 ms).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_tenancy::store::BreakerConfig;
    /// let config = BreakerConfig::new().interval(Duration::from_secs(30));
    /// # let _ = config;
    /// ```
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(10));
        self
    }

    /// How long a breaker that has just opened stays open before a probe
    /// (each failed probe doubles it, up to
    /// [`max_cool_down`](Self::max_cool_down)).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_tenancy::store::BreakerConfig;
    /// let config = BreakerConfig::new().cool_down(Duration::from_millis(500));
    /// # let _ = config;
    /// ```
    pub fn cool_down(mut self, cool_down: Duration) -> Self {
        self.cool_down = cool_down;
        self
    }

    /// The longest cool-down after repeated failed probes. At most
    /// [`cool_down`](Self::cool_down) (for example `Duration::ZERO`): every
    /// cool-down is `cool_down`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_tenancy::store::BreakerConfig;
    /// // Always 1 s, as before 0.2.
    /// let config = BreakerConfig::new()
    ///     .cool_down(Duration::from_secs(1))
    ///     .max_cool_down(Duration::ZERO);
    /// # let _ = config;
    /// ```
    pub fn max_cool_down(mut self, max_cool_down: Duration) -> Self {
        self.max_cool_down = max_cool_down;
        self
    }
}

const BUCKETS: usize = 10;

/// One circuit breaker (of a store, or of one partition of it).
pub(crate) struct Breaker {
    partition: Arc<str>,
    consecutive_failures: u32,
    silence: Duration,
    failure_rate: u64,
    minimum_calls: u64,
    bucket: Duration,
    cool_down: Duration,
    max_cool_down: Duration,
    origin: Instant,
    inner: Mutex<Inner>,
}

struct Inner {
    state: State,
    /// Failures in a row, and the start of the oldest of them.
    run: u32,
    run_start: Instant,
    buckets: [Bucket; BUCKETS],
    /// The cool-down of the next opening: `cool_down`, doubled by each
    /// failed probe up to `max_cool_down`.
    next_cool_down: Duration,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    epoch: u64,
    calls: u32,
    failures: u32,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

impl Breaker {
    /// A closed breaker; `timeout` is the store's (the default silence is
    /// twice it).
    pub(crate) fn new(partition: Arc<str>, config: &BreakerConfig, timeout: Duration) -> Self {
        let now = Instant::now();
        let breaker = Self {
            partition,
            consecutive_failures: config.consecutive_failures.max(1),
            silence: config.silence.unwrap_or(timeout * 2),
            failure_rate: u64::from(config.failure_rate),
            minimum_calls: u64::from(config.minimum_calls),
            bucket: config.interval / BUCKETS as u32,
            cool_down: config.cool_down,
            max_cool_down: config.max_cool_down.max(config.cool_down),
            origin: now,
            inner: Mutex::new(Inner {
                state: State::Closed,
                run: 0,
                run_start: now,
                buckets: [Bucket::default(); BUCKETS],
                next_cool_down: config.cool_down,
            }),
        };
        breaker.report(BreakerState::Closed);
        breaker
    }

    pub(crate) fn partition(&self) -> &Arc<str> {
        &self.partition
    }

    pub(crate) fn state(&self) -> BreakerState {
        match self.inner.lock().state {
            State::Closed => BreakerState::Closed,
            State::Open { until } if Instant::now() < until => BreakerState::Open,
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether this call may go to the store.
    pub(crate) fn try_acquire(&self) -> bool {
        let mut inner = self.inner.lock();
        match inner.state {
            State::Closed => true,
            State::Open { until } => {
                if Instant::now() < until {
                    return false;
                }
                inner.state = State::HalfOpen { probing: true };
                drop(inner);
                tracing::warn!(
                    partition = %self.partition,
                    "counter store breaker half-open: probing the store"
                );
                self.report(BreakerState::HalfOpen);
                true
            }
            State::HalfOpen { probing: true } => false,
            State::HalfOpen { probing: false } => {
                inner.state = State::HalfOpen { probing: true };
                true
            }
        }
    }

    /// A call answered.
    pub(crate) fn success(&self) {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        match inner.state {
            State::Closed => {
                inner.run = 0;
                self.count(&mut inner, now, false);
            }
            State::HalfOpen { .. } => {
                inner.state = State::Closed;
                inner.run = 0;
                inner.buckets = [Bucket::default(); BUCKETS];
                inner.next_cool_down = self.cool_down;
                drop(inner);
                tracing::warn!(
                    partition = %self.partition,
                    "counter store breaker closed: the store answers again"
                );
                self.report(BreakerState::Closed);
            }
            // A call started before the breaker opened.
            State::Open { .. } => {}
        }
    }

    /// A call that started at `started` failed (error or timeout).
    pub(crate) fn failure(&self, started: Instant) {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        match inner.state {
            State::Closed => {
                if inner.run == 0 || started < inner.run_start {
                    inner.run_start = started;
                }
                inner.run = inner.run.saturating_add(1);
                let (calls, failures) = self.count(&mut inner, now, true);
                let outage = inner.run >= self.consecutive_failures
                    && now.saturating_duration_since(inner.run_start) >= self.silence;
                let rate =
                    calls >= self.minimum_calls && failures * 100 >= self.failure_rate * calls;
                if outage || rate {
                    let cool_down = inner.next_cool_down;
                    inner.state = State::Open {
                        until: now + cool_down,
                    };
                    let run = inner.run;
                    drop(inner);
                    tracing::warn!(
                        partition = %self.partition,
                        failures_in_a_row = run,
                        calls,
                        failures,
                        rule = if outage { "outage" } else { "failure rate" },
                        cool_down_ms = cool_down.as_millis() as u64,
                        "counter store breaker open: the store is not called during the cool-down"
                    );
                    self.opened();
                }
            }
            State::HalfOpen { .. } => {
                let cool_down = (inner.next_cool_down * 2).min(self.max_cool_down);
                inner.next_cool_down = cool_down;
                inner.state = State::Open {
                    until: now + cool_down,
                };
                drop(inner);
                tracing::warn!(
                    partition = %self.partition,
                    cool_down_ms = cool_down.as_millis() as u64,
                    "counter store breaker open again: the probe failed"
                );
                self.opened();
            }
            // A call started before the breaker opened: already open.
            State::Open { .. } => {}
        }
    }

    /// A call whose future was dropped before an answer (the client went
    /// away): a half-open breaker may probe again.
    pub(crate) fn abandoned(&self) {
        let mut inner = self.inner.lock();
        if let State::HalfOpen { probing: true } = inner.state {
            inner.state = State::HalfOpen { probing: false };
        }
    }

    /// Counts one call in the rolling interval; returns the interval's
    /// calls and failures.
    fn count(&self, inner: &mut Inner, now: Instant, failed: bool) -> (u64, u64) {
        let epoch = (now.saturating_duration_since(self.origin).as_nanos()
            / self.bucket.as_nanos().max(1)) as u64;
        let bucket = &mut inner.buckets[(epoch % BUCKETS as u64) as usize];
        if bucket.epoch != epoch {
            *bucket = Bucket {
                epoch,
                ..Bucket::default()
            };
        }
        bucket.calls = bucket.calls.saturating_add(1);
        bucket.failures = bucket.failures.saturating_add(u32::from(failed));
        if !failed {
            return (0, 0);
        }
        inner
            .buckets
            .iter()
            .filter(|b| b.epoch + (BUCKETS as u64) > epoch && b.epoch <= epoch)
            .fold((0, 0), |(c, f), b| {
                (c + u64::from(b.calls), f + u64::from(b.failures))
            })
    }

    fn opened(&self) {
        self.report(BreakerState::Open);
        #[cfg(feature = "metrics")]
        metrics::counter!(
            "tenancy_store_breaker_opened_total",
            "partition" => self.partition.to_string()
        )
        .increment(1);
    }

    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn report(&self, state: BreakerState) {
        #[cfg(feature = "metrics")]
        metrics::gauge!(
            "tenancy_store_breaker_state",
            "partition" => self.partition.to_string()
        )
        .set(state.gauge());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(config: BreakerConfig) -> Breaker {
        Breaker::new(Arc::from("test"), &config, Duration::from_millis(100))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn quick_failures_alone_do_not_open_but_a_silence_does() {
        let b = breaker(BreakerConfig::new());
        // Three refused calls at once: a hiccup.
        for _ in 0..3 {
            b.failure(Instant::now());
        }
        assert_eq!(b.state(), BreakerState::Closed);
        // Still failing 200 ms (2 × timeout) after the first: an outage.
        tokio::time::advance(ms(199)).await;
        b.failure(Instant::now());
        assert_eq!(b.state(), BreakerState::Closed);
        tokio::time::advance(ms(1)).await;
        b.failure(Instant::now());
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn frozen_store_opens_about_two_timeouts_after_it_froze() {
        let b = breaker(BreakerConfig::new());
        let frozen = Instant::now();
        // Calls time out 100 ms after they started.
        tokio::time::advance(ms(100)).await;
        for _ in 0..5 {
            b.failure(frozen);
        }
        assert_eq!(b.state(), BreakerState::Closed, "100 ms of silence");
        tokio::time::advance(ms(100)).await;
        b.failure(frozen + ms(100));
        assert_eq!(b.state(), BreakerState::Open, "200 ms of silence");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_calls_between_answers_open_nothing() {
        let b = breaker(BreakerConfig::new());
        // A busy machine: two of every five calls miss the timeout, for 10 s.
        for i in 0..1000u64 {
            tokio::time::advance(ms(10)).await;
            if i % 5 < 2 {
                b.failure(Instant::now() - ms(100));
            } else {
                b.success();
            }
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn failure_rate_over_the_interval_opens() {
        let b = breaker(BreakerConfig::new().consecutive_failures(1000));
        // Every other call fails, 19 calls: below the minimum.
        for i in 0..19 {
            tokio::time::advance(ms(100)).await;
            if i % 2 == 0 {
                b.failure(Instant::now());
            } else {
                b.success();
            }
        }
        assert_eq!(b.state(), BreakerState::Closed);
        tokio::time::advance(ms(100)).await;
        b.success();
        tokio::time::advance(ms(100)).await;
        // 21 calls, 11 failures: 52 %.
        b.failure(Instant::now());
        assert_eq!(b.state(), BreakerState::Open);
    }

    /// 11 answers then 9 failures (45 %), a pause of `pause`, then 10
    /// failures (below the minimum alone, 63 % with the earlier calls).
    async fn two_phases(pause: Duration) -> BreakerState {
        let b = breaker(BreakerConfig::new().consecutive_failures(1000));
        for _ in 0..11 {
            b.success();
        }
        for _ in 0..9 {
            b.failure(Instant::now());
        }
        assert_eq!(b.state(), BreakerState::Closed);
        tokio::time::advance(pause).await;
        for _ in 0..10 {
            b.failure(Instant::now());
        }
        b.state()
    }

    #[tokio::test(start_paused = true)]
    async fn old_calls_leave_the_interval() {
        assert_eq!(two_phases(ms(5000)).await, BreakerState::Open);
        assert_eq!(two_phases(ms(11_000)).await, BreakerState::Closed);
    }

    /// Opens `b` (3 quick failures with no silence rule).
    fn open(b: &Breaker) {
        for _ in 0..3 {
            b.failure(Instant::now());
        }
        assert_eq!(b.state(), BreakerState::Open);
    }

    /// Advances to 1 ms before the cool-down ends (still open), then to its
    /// end (half-open).
    async fn cool_down_is(b: &Breaker, cool_down: u64) {
        tokio::time::advance(ms(cool_down - 1)).await;
        assert_eq!(b.state(), BreakerState::Open, "{cool_down} ms");
        assert!(!b.try_acquire());
        tokio::time::advance(ms(1)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen, "{cool_down} ms");
    }

    #[tokio::test(start_paused = true)]
    async fn cool_down_doubles_per_failed_probe_up_to_the_maximum() {
        let b = breaker(BreakerConfig::new().silence(Duration::ZERO));
        open(&b);
        for cool_down in [250, 500, 1000, 1000, 1000] {
            cool_down_is(&b, cool_down).await;
            assert!(b.try_acquire(), "the probe");
            b.failure(Instant::now());
        }
        cool_down_is(&b, 1000).await;
        assert!(b.try_acquire());
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        // Closed again: the next opening starts from the first cool-down.
        open(&b);
        cool_down_is(&b, 250).await;
        // A fixed cool-down when the maximum is below it.
        let fixed = breaker(
            BreakerConfig::new()
                .silence(Duration::ZERO)
                .cool_down(ms(700))
                .max_cool_down(Duration::ZERO),
        );
        open(&fixed);
        for _ in 0..3 {
            cool_down_is(&fixed, 700).await;
            assert!(fixed.try_acquire());
            fixed.failure(Instant::now());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cool_down_probe_and_close() {
        let b = breaker(BreakerConfig::new().silence(Duration::ZERO));
        for _ in 0..3 {
            b.failure(Instant::now());
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.try_acquire());
        // A late answer of a call started before: still open.
        b.success();
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(ms(250)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.try_acquire(), "the probe");
        assert!(!b.try_acquire(), "one probe at a time");
        b.failure(Instant::now());
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(ms(500)).await;
        assert!(b.try_acquire());
        b.abandoned();
        assert!(b.try_acquire(), "an abandoned probe lets another through");
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        // Closing forgets the earlier failures.
        b.failure(Instant::now());
        b.failure(Instant::now());
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
