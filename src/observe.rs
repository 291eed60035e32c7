//! Tracing events and (with the `metrics` feature) counters for admissions
//! and rejections. One place, so every layer reports the same way.

use crate::reject::Rejection;

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
