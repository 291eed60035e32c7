//! Soft limits: a warning when a tenant is close to a limit, before it is
//! refused. Configured on [`AdmissionLayer::soft_limit`](crate::AdmissionLayer::soft_limit).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use parking_lot::Mutex;

use crate::store::{Algorithm, Check, Decision};
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
    /// (tenant, policy) → end of the period in which the hook fired, in ms.
    last: HashMap<(TenantId, Arc<str>), u64>,
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

    /// Looks at an admitted request's decisions: fires the hook once per
    /// period for each rule at or above the threshold, and returns the
    /// warning header value (the fullest such rule) when enabled.
    pub(crate) fn observe<'a>(
        &self,
        tenant: &TenantId,
        pairs: impl Iterator<Item = (&'a Check, &'a Decision)>,
    ) -> Option<HeaderValue> {
        let mut warning: Option<(&Check, &Decision)> = None;
        for (check, decision) in pairs {
            let windowed = check.algorithm.rate_window().is_some()
                || matches!(check.algorithm, Algorithm::Calendar { .. });
            let threshold = u128::from(decision.limit) * u128::from(self.threshold_percent);
            if !windowed || u128::from(decision.used) * 100 < threshold {
                continue;
            }
            if let Some(hook) = &self.hook {
                self.fire_once(hook, tenant, check, decision);
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
            let key = (tenant.clone(), check.policy.clone());
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
        let event = SoftLimitEvent {
            tenant: tenant.clone(),
            policy: check.policy.to_string(),
            limit: decision.limit,
            used: decision.used,
            threshold_percent: self.threshold_percent,
            period_end: UNIX_EPOCH + Duration::from_millis(end),
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
