//! `grpc-status-details-bin` of a gRPC refusal: a `google.rpc.Status`
//! (Google's rich error model) built with `tonic-types`, so that a client
//! reads it with `tonic_types::StatusExt::get_error_details`.
//!
//! * every refusal: `ErrorInfo` with `reason` = the rejection's code in the
//!   upper case `google.rpc.ErrorInfo` asks for (`RATE_LIMITED`,
//!   `UNKNOWN_TENANT`, …), `domain` = [`ERROR_DOMAIN`], and `metadata` with
//!   `tenant`, `plan`, `feature` and `policy` where known;
//! * `RESOURCE_EXHAUSTED`: `QuotaFailure` with one violation per violated
//!   policy (`subject` = the policy name, `description` = its usage);
//! * whenever the wait is known: `RetryInfo` with `retry_delay` = the
//!   `Retry-After` delay (whole seconds, rounded up).

use std::collections::HashMap;
use std::time::Duration;

use http::HeaderValue;
use tonic::metadata::{Binary, MetadataValue};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::Rejection;

/// The `domain` of the `ErrorInfo` of gRPC refusals.
pub const ERROR_DOMAIN: &str = "tower-tenancy";

/// The rich error details of `rejection`.
pub(super) fn error_details(rejection: &Rejection) -> ErrorDetails {
    let d = &rejection.0;
    let mut details = ErrorDetails::new();
    let mut metadata = HashMap::new();
    let known = [
        ("tenant", d.tenant.as_ref().map(|t| t.as_str())),
        ("plan", d.plan.as_deref()),
        ("feature", d.feature.as_deref()),
        ("policy", d.policy.as_deref()),
    ];
    for (key, value) in known {
        if let Some(value) = value {
            metadata.insert(key.to_owned(), value.to_owned());
        }
    }
    details.set_error_info(d.kind.code().to_ascii_uppercase(), ERROR_DOMAIN, metadata);
    if d.kind.grpc_code() == 8 {
        for policy in rejection.violated() {
            let description = match (d.policy.as_deref() == Some(policy), d.limit, d.usage) {
                (true, Some(limit), Some(usage)) => format!("{usage} of {limit} used"),
                _ => "limit reached".to_owned(),
            };
            details.add_quota_failure_violation(policy, description);
        }
    }
    if let Some(secs) = rejection.retry_after_secs() {
        details.set_retry_info(Some(Duration::from_secs(secs)));
    }
    details
}

/// The `grpc-status-details-bin` value (base64 of the encoded
/// `google.rpc.Status`).
pub(super) fn status_details(rejection: &Rejection) -> Option<HeaderValue> {
    let code = Code::from(i32::from(rejection.0.kind.grpc_code()));
    let status =
        Status::with_error_details(code, rejection.detail_text(), error_details(rejection));
    let value: MetadataValue<Binary> = MetadataValue::from_bytes(status.details());
    HeaderValue::from_bytes(value.as_encoded_bytes()).ok()
}
