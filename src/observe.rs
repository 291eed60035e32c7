//! Tracing events and, with the `metrics` feature, counters for admissions
//! and rejections — one place, so every layer reports the same way.
//!
//! * every rejection: a `tracing` event (`info` for 4xx, `warn` for 503)
//!   with `tenant.id`, `code`, `policy`, `limit` and `usage`;
//! * `tenancy_admitted_total{policy}`: one increment per admitted check;
//! * `tenancy_rejected_total{code,policy}`: one increment per rejection;
//! * every would-be refusal by a rule in shadow mode: an `info` event
//!   `shadow rejection` with `tenant.id`, `code`, `policy`, `limit`, `usage`
//!   and an increment of `tenancy_shadow_rejected_total{code,policy}`
//!   (the request itself was admitted).
//!
//! Counters carry no tenant label by default (one series per tenant can be
//! too many); [`label_tenants`] adds it where the number of tenants allows.

#[cfg(feature = "metrics")]
use std::sync::atomic::{AtomicBool, Ordering};

use crate::reject::{Rejection, RejectionKind};
use crate::store::{Check, Decision};
use crate::tenant::TenantId;

#[cfg(feature = "metrics")]
static TENANT_LABELS: AtomicBool = AtomicBool::new(false);

/// Adds (or removes) the `tenant` label on the counters of this module.
///
/// ```
/// tower_tenancy::observe::label_tenants(true);
/// # tower_tenancy::observe::label_tenants(false);
/// ```
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub fn label_tenants(on: bool) {
    TENANT_LABELS.store(on, Ordering::Relaxed);
}

#[cfg(feature = "metrics")]
fn tenant_label(tenant: &str) -> Option<(&'static str, String)> {
    TENANT_LABELS
        .load(Ordering::Relaxed)
        .then(|| ("tenant", tenant.to_owned()))
}

/// Records an admitted request.
pub(crate) fn admitted(tenant: &TenantId, checks: &[Check]) {
    tracing::trace!(tenant.id = %tenant, checks = checks.len(), "request admitted");
    #[cfg(feature = "metrics")]
    for check in checks {
        let mut labels = vec![("policy", check.policy.to_string())];
        labels.extend(tenant_label(tenant.as_str()));
        metrics::counter!("tenancy_admitted_total", &labels).increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = checks;
}

/// Records a rejection.
pub(crate) fn rejected(rejection: &Rejection) {
    let tenant = rejection.tenant_id().map(|t| t.as_str()).unwrap_or("");
    let code = rejection.kind().code();
    let policy = rejection.policy_name().unwrap_or("");
    if rejection.http_status().is_server_error() {
        tracing::warn!(tenant.id = tenant, code, policy, "request rejected");
    } else {
        tracing::info!(
            tenant.id = tenant,
            code,
            policy,
            limit = rejection.limit(),
            usage = rejection.current_usage(),
            "request rejected"
        );
    }
    #[cfg(feature = "metrics")]
    {
        let mut labels = vec![("code", code.to_owned()), ("policy", policy.to_owned())];
        labels.extend(tenant_label(tenant));
        metrics::counter!("tenancy_rejected_total", &labels).increment(1);
    }
}

/// Records a refusal that a shadowed rule would have made.
pub(crate) fn shadow_rejected(
    tenant: &TenantId,
    kind: RejectionKind,
    policy: &str,
    decision: &Decision,
) {
    let code = kind.code();
    tracing::info!(
        tenant.id = %tenant,
        code,
        policy,
        limit = decision.limit,
        usage = decision.used,
        "shadow rejection"
    );
    #[cfg(feature = "metrics")]
    {
        let mut labels = vec![("code", code.to_owned()), ("policy", policy.to_owned())];
        labels.extend(tenant_label(tenant.as_str()));
        metrics::counter!("tenancy_shadow_rejected_total", &labels).increment(1);
    }
}
