//! Soft limits: a warning when a tenant is close to a limit, before it is
//! refused. Configured on [`AdmissionLayer::soft_limit`](crate::AdmissionLayer::soft_limit).
//!
//! The hook fires once per tenant, rule and window (rate limits) or period
//! (quotas) for every instance sharing the store: each check carries the
//! threshold ([`Check::soft`]), and the store records the first admission
//! at or above it in the same call as the admission
//! ([`Admission::soft_crossed`]). A store that does not record it (a
//! custom store, a [`ResilientStore`](crate::store::ResilientStore)
//! answering fail-open) leaves the deduplication to this instance: once per
//! tenant, rule and period end as the decision reports it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use parking_lot::Mutex;

use crate::store::{Admission, Algorithm, Check, Decision};
use crate::tenant::TenantId;

/// A tenant crossed the soft-limit threshold of a rate limit or quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoftLimitEvent {
    /// The tenant.
    pub tenant: TenantId,
    /// The rule name.
    pub policy: String,
    /// The limit.
    pub limit: u64,
    /// Units used after this request.
    pub used: u64,
    /// The threshold in percent of the limit.
    pub threshold_percent: u8,
    /// When the current window or period ends (the hook fires again after).
    pub period_end: SystemTime,
}

const PERIOD_TOLERANCE_MS: u64 = 500;

type Hook = dyn Fn(&SoftLimitEvent) + Send + Sync;

/// Soft-limit settings and the record of which (tenant, policy, period)
/// already fired. Applies to rate limits and quotas.
pub(crate) struct SoftLimit {
    threshold_percent: u8,
    hook: Option<Arc<Hook>>,
    header: bool,
    fired: Mutex<Fired>,
}

#[derive(Default)]
struct Fired {
    /// (tenant, policy, is a quota) → end of the period in which the hook
    /// fired, in ms (a rate and a quota may share a name).
    last: HashMap<(TenantId, Arc<str>, bool), u64>,
    sweep_at: usize,
}

impl SoftLimit {
    pub(crate) fn new(threshold_percent: u8) -> Self {
        Self {
            threshold_percent: threshold_percent.min(100),
            hook: None,
            header: false,
            fired: Mutex::new(Fired {
                last: HashMap::new(),
                sweep_at: 1024,
            }),
        }
    }

    pub(crate) fn threshold(&mut self, percent: u8) {
        self.threshold_percent = percent.min(100);
    }

    pub(crate) fn hook(&mut self, hook: impl Fn(&SoftLimitEvent) + Send + Sync + 'static) {
        self.hook = Some(Arc::new(hook));
    }

    pub(crate) fn header(&mut self, on: bool) {
        self.header = on;
    }

    /// The threshold the store records for a check of `algorithm`
    /// ([`Check::soft_percent`]): set when a hook is, for enforced rate
    /// limits and quotas.
    pub(crate) fn percent_for(&self, algorithm: &Algorithm, shadow: bool) -> Option<u8> {
        (self.hook.is_some() && !shadow && windowed(algorithm)).then_some(self.threshold_percent)
    }

    /// Looks at an admitted request's decisions: fires the hook for each
    /// rule the store reports crossing first (or, when the store does not
    /// record crossings, once per period on this instance), and returns the
    /// warning header value (the fullest rule at or above the threshold)
    /// when enabled.
    pub(crate) fn observe(
        &self,
        tenant: &TenantId,
        checks: &[Check],
        admission: &Admission,
    ) -> Option<HeaderValue> {
        let mut warning: Option<(&Check, &Decision)> = None;
        let pairs = checks.iter().zip(&admission.decisions).enumerate();
        for (index, (check, decision)) in pairs.filter(|(_, (c, _))| !c.shadow) {
            let threshold = u128::from(decision.limit) * u128::from(self.threshold_percent);
            if !windowed(&check.algorithm) || u128::from(decision.used) * 100 < threshold {
                continue;
            }
            if let Some(hook) = &self.hook {
                match admission.soft_crossed(index) {
                    Some(true) => self.fire(
                        hook,
                        tenant,
                        check,
                        decision,
                        store_period_end(check, decision),
                    ),
                    Some(false) => {}
                    None => self.fire_once(hook, tenant, check, decision),
                }
            }
            if warning.is_none_or(|(_, w)| decision.remaining < w.remaining) {
                warning = Some((check, decision));
            }
        }
        let (check, decision) = warning.filter(|_| self.header)?;
        HeaderValue::from_str(&format!(
            "\"{}\";u={};q={}",
            check.policy, decision.used, decision.limit
        ))
        .ok()
    }

    /// Fires once per (tenant, policy) and period end on this instance.
    fn fire_once(&self, hook: &Arc<Hook>, tenant: &TenantId, check: &Check, decision: &Decision) {
        let now = SystemTime::now();
        let end = now
            .checked_add(decision.reset)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        {
            let mut fired = self.fired.lock();
            let quota = matches!(check.algorithm, Algorithm::Calendar { .. });
            let key = (tenant.clone(), check.policy.clone(), quota);
            match fired.last.get(&key) {
                // The same period end, give or take the jitter between the
                // store's clock and ours (periods are 1 s or longer).
                Some(&last) if last.abs_diff(end) < PERIOD_TOLERANCE_MS => return,
                _ => {}
            }
            fired.last.insert(key, end);
            if fired.last.len() >= fired.sweep_at {
                fired.last.retain(|_, end| *end > now_ms);
                fired.sweep_at = (fired.last.len() * 2).max(1024);
            }
        }
        self.fire(
            hook,
            tenant,
            check,
            decision,
            UNIX_EPOCH + Duration::from_millis(end),
        );
    }

    fn fire(
        &self,
        hook: &Arc<Hook>,
        tenant: &TenantId,
        check: &Check,
        decision: &Decision,
        period_end: SystemTime,
    ) {
        let event = SoftLimitEvent {
            tenant: tenant.clone(),
            policy: check.policy.to_string(),
            limit: decision.limit,
            used: decision.used,
            threshold_percent: self.threshold_percent,
            period_end,
        };
        tracing::info!(
            tenant.id = %tenant,
            policy = %check.policy,
            used = decision.used,
            limit = decision.limit,
            "soft limit reached"
        );
        hook(&event);
    }
}

/// Whether `algorithm` has a window or period (rate limits and quotas).
fn windowed(algorithm: &Algorithm) -> bool {
    algorithm.rate_window().is_some() || matches!(algorithm, Algorithm::Calendar { .. })
}

/// Until when the store remembers a crossing: one window from now (rate
/// limits), the end of the period (quotas).
fn store_period_end(check: &Check, decision: &Decision) -> SystemTime {
    let now = SystemTime::now();
    let hold = check.algorithm.rate_window().unwrap_or(decision.reset);
    now.checked_add(hold).unwrap_or(now)
}
