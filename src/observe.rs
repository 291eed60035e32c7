//! Tracing events and (with the `metrics` feature) counters for admissions
//! and rejections. One place, so every layer reports the same way.

use crate::reject::Rejection;
use crate::store::Check;
use crate::tenant::TenantId;

/// Records an admitted request: the counter
/// `tenancy_admitted_total{policy}` per check (no tenant label: unbounded
/// cardinality), and a `trace` event.
pub(crate) fn admitted(tenant: &TenantId, checks: &[Check]) {
    tracing::trace!(tenant.id = %tenant, checks = checks.len(), "request admitted");
    #[cfg(feature = "metrics")]
    for check in checks {
        metrics::counter!("tenancy_admitted_total", "policy" => check.policy.to_string())
            .increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = checks;
}

/// Records a rejection: a `tracing` event at `info` (client errors) or
/// `warn` (503) with tenant, code, policy, limit and usage, and the counter
/// `tenancy_rejected_total{code, policy}`.
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
    metrics::counter!("tenancy_rejected_total", "code" => code, "policy" => policy.to_owned())
        .increment(1);
}
