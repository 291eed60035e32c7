//! Every refusal in one place: [`Rejection`] and its rendering as an
//! `application/problem+json` response (RFC 9457) or, for gRPC requests, a
//! trailers-only response with `grpc-status` and `grpc-message`; plus the
//! IETF `RateLimit` / `RateLimit-Policy` header fields ([`RateLimitFields`]).

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Response, StatusCode};
use serde::Serialize;

use crate::tenant::{TenantId, TenantStatus};

mod fields;
#[cfg(feature = "tonic")]
mod grpc_details;

pub(crate) use fields::{
    render_policy, render_state, sf_string, state_prefix, PolicyItem, StateItem,
};
pub use fields::{HeaderStyle, RateLimitFields, RateLimitHeaders};
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub use grpc_details::ERROR_DOMAIN;

/// What was refused, with a stable machine-readable [`code`](Self::code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectionKind {
    /// No resolver found a tenant and one is required. 400.
    TenantRequired,
    /// A source carried a value that is not a valid tenant id. 400.
    MalformedTenantId,
    /// The directory does not know the tenant. 403 (or 404 when configured).
    UnknownTenant,
    /// The tenant is suspended, expired or deleted. 403.
    TenantInactive(TenantStatus),
    /// The authenticated principal may not act for the tenant. 403.
    TenantNotPermitted,
    /// The tenant's plan lacks a feature. 403.
    FeatureNotInPlan,
    /// A resource limit (e.g. number of workflows) is reached. 403.
    ResourceLimitReached,
    /// A rate limit denied the request. 429.
    RateLimited,
    /// A calendar quota is used up. 429.
    QuotaExceeded,
    /// Too many requests of the tenant are in flight. 429.
    ConcurrencyLimited,
    /// The counter store or directory failed and the policy is fail-closed. 503.
    Unavailable,
}

impl RejectionKind {
    /// The stable code used in problem bodies, logs and metrics.
    pub fn code(self) -> &'static str {
        match self {
            RejectionKind::TenantRequired => "tenant_required",
            RejectionKind::MalformedTenantId => "malformed_tenant_id",
            RejectionKind::UnknownTenant => "unknown_tenant",
            RejectionKind::TenantInactive(_) => "tenant_inactive",
            RejectionKind::TenantNotPermitted => "tenant_not_permitted",
            RejectionKind::FeatureNotInPlan => "feature_not_in_plan",
            RejectionKind::ResourceLimitReached => "resource_limit_reached",
            RejectionKind::RateLimited => "rate_limited",
            RejectionKind::QuotaExceeded => "quota_exceeded",
            RejectionKind::ConcurrencyLimited => "concurrency_limited",
            RejectionKind::Unavailable => "unavailable",
        }
    }

    fn title(self) -> &'static str {
        match self {
            RejectionKind::TenantRequired => "Tenant required",
            RejectionKind::MalformedTenantId => "Malformed tenant id",
            RejectionKind::UnknownTenant => "Unknown tenant",
            RejectionKind::TenantInactive(_) => "Tenant not active",
            RejectionKind::TenantNotPermitted => "Tenant not permitted",
            RejectionKind::FeatureNotInPlan => "Feature not in plan",
            RejectionKind::ResourceLimitReached => "Resource limit reached",
            RejectionKind::RateLimited => "Rate limit exceeded",
            RejectionKind::QuotaExceeded => "Quota exceeded",
            RejectionKind::ConcurrencyLimited => "Too many concurrent requests",
            RejectionKind::Unavailable => "Service unavailable",
        }
    }

    /// The default HTTP status (see the crate's rejection table).
    pub fn default_status(self) -> StatusCode {
        match self {
            RejectionKind::TenantRequired | RejectionKind::MalformedTenantId => {
                StatusCode::BAD_REQUEST
            }
            RejectionKind::UnknownTenant
            | RejectionKind::TenantInactive(_)
            | RejectionKind::TenantNotPermitted
            | RejectionKind::FeatureNotInPlan
            | RejectionKind::ResourceLimitReached => StatusCode::FORBIDDEN,
            RejectionKind::RateLimited
            | RejectionKind::QuotaExceeded
            | RejectionKind::ConcurrencyLimited => StatusCode::TOO_MANY_REQUESTS,
            RejectionKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The gRPC status code: 3 INVALID_ARGUMENT, 7 PERMISSION_DENIED,
    /// 8 RESOURCE_EXHAUSTED or 14 UNAVAILABLE.
    pub fn grpc_code(self) -> u8 {
        match self {
            RejectionKind::TenantRequired | RejectionKind::MalformedTenantId => 3,
            RejectionKind::UnknownTenant
            | RejectionKind::TenantInactive(_)
            | RejectionKind::TenantNotPermitted
            | RejectionKind::FeatureNotInPlan => 7,
            RejectionKind::ResourceLimitReached
            | RejectionKind::RateLimited
            | RejectionKind::QuotaExceeded
            | RejectionKind::ConcurrencyLimited => 8,
            RejectionKind::Unavailable => 14,
        }
    }
}

/// A refused request: what, for which tenant, under which policy, with the
/// limit and usage where known. Rendered by [`Rejection::to_response`].
///
/// ```
/// use tower_tenancy::reject::{Rejection, RejectionKind};
///
/// let r = Rejection::new(RejectionKind::FeatureNotInPlan)
///     .tenant("acme".parse().unwrap())
///     .feature("webhooks")
///     .plan("free");
/// let http = r.to_response(false);
/// assert_eq!(http.status(), 403);
/// assert_eq!(http.headers()["content-type"], "application/problem+json");
/// let body: serde_json::Value = serde_json::from_slice(http.body()).unwrap();
/// assert_eq!(body["code"], "feature_not_in_plan");
///
/// let grpc = r.to_response(true);
/// assert_eq!(grpc.headers()["grpc-status"], "7");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection(Box<Details>);

#[derive(Debug, Clone, PartialEq)]
struct Details {
    kind: RejectionKind,
    status: StatusCode,
    detail: String,
    tenant: Option<TenantId>,
    plan: Option<String>,
    feature: Option<String>,
    policy: Option<String>,
    limit: Option<u64>,
    usage: Option<u64>,
    retry_after: Option<Duration>,
    rate_limit: Option<RateLimitHeaders>,
    /// Every violated policy (empty: the `policy`, if any).
    violated: Vec<String>,
    /// The 0.1 `type` for 429 bodies ([`HeaderStyle::MostRestrictive`]).
    previous_type: bool,
}

/// The registered problem type of refusals by a quota policy
/// (draft-ietf-httpapi-ratelimit-headers, "Quota Exceeded").
pub const QUOTA_EXCEEDED_TYPE: &str =
    "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// The registered title of [`QUOTA_EXCEEDED_TYPE`].
const QUOTA_EXCEEDED_TITLE: &str =
    "Request cannot be satisfied as assigned quota has been exceeded";

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    type_: String,
    title: &'static str,
    status: u16,
    detail: &'a str,
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_of_tenant: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    feature: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
    #[serde(rename = "violated-policies", skip_serializing_if = "Option::is_none")]
    violated_policies: Option<Vec<&'a str>>,
}

impl Rejection {
    /// A rejection of `kind` with its default status and a generic detail.
    pub fn new(kind: RejectionKind) -> Self {
        Self(Box::new(Details {
            kind,
            status: kind.default_status(),
            detail: String::new(),
            tenant: None,
            plan: None,
            feature: None,
            policy: None,
            limit: None,
            usage: None,
            retry_after: None,
            rate_limit: None,
            violated: Vec::new(),
            previous_type: false,
        }))
    }

    /// Replaces the HTTP status (for example 404 for unknown tenants).
    #[must_use]
    pub fn status(mut self, status: StatusCode) -> Self {
        self.0.status = status;
        self
    }

    /// Sets the human-readable detail. Never put internal errors here.
    #[must_use]
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.0.detail = detail.into();
        self
    }

    /// Names the tenant.
    #[must_use]
    pub fn tenant(mut self, tenant: TenantId) -> Self {
        self.0.tenant = Some(tenant);
        self
    }

    /// Names the tenant's plan.
    #[must_use]
    pub fn plan(mut self, plan: impl Into<String>) -> Self {
        self.0.plan = Some(plan.into());
        self
    }

    /// Names the missing feature.
    #[must_use]
    pub fn feature(mut self, feature: impl Into<String>) -> Self {
        self.0.feature = Some(feature.into());
        self
    }

    /// Names the policy (limit, rate, quota or concurrency rule).
    #[must_use]
    pub fn policy(mut self, policy: impl Into<String>) -> Self {
        self.0.policy = Some(policy.into());
        self
    }

    /// Sets the limit and the current usage.
    #[must_use]
    pub fn usage(mut self, limit: u64, usage: u64) -> Self {
        self.0.limit = Some(limit);
        self.0.usage = Some(usage);
        self
    }

    /// Sets the `Retry-After` delay (rounded up to whole seconds, at least 1).
    #[must_use]
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.0.retry_after = Some(after);
        self
    }

    /// Attaches rate-limit header fields: a [`RateLimitFields`] (one
    /// policy) or [`RateLimitHeaders`] rendered already.
    #[must_use]
    pub fn rate_limit(mut self, fields: impl Into<RateLimitHeaders>) -> Self {
        self.0.rate_limit = Some(fields.into());
        self
    }

    /// Names every policy the request violated (the `violated-policies`
    /// member of a 429 body, and the `QuotaFailure` violations of a gRPC
    /// refusal). Without it, the [`policy`](Self::policy) is the one.
    ///
    /// ```
    /// use tower_tenancy::reject::{Rejection, RejectionKind};
    ///
    /// let r = Rejection::new(RejectionKind::RateLimited)
    ///     .policy("per_minute")
    ///     .violated_policies(["per_minute", "per_day"]);
    /// let body: serde_json::Value = serde_json::from_slice(&r.problem_json()).unwrap();
    /// assert_eq!(body["type"], "https://iana.org/assignments/http-problem-types#quota-exceeded");
    /// assert_eq!(body["violated-policies"], serde_json::json!(["per_minute", "per_day"]));
    /// ```
    #[must_use]
    pub fn violated_policies(
        mut self,
        policies: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.0.violated = policies.into_iter().map(Into::into).collect();
        self
    }

    /// 429 bodies keep the 0.1 `type` (`urn:tower-tenancy:problem:<code>`)
    /// and have no `violated-policies`.
    pub(crate) fn with_previous_problem_type(mut self) -> Self {
        self.0.previous_type = true;
        self
    }

    /// The violated policies: those named by
    /// [`violated_policies`](Self::violated_policies), else the policy.
    pub fn violated(&self) -> Vec<&str> {
        if self.0.violated.is_empty() {
            self.0.policy.as_deref().into_iter().collect()
        } else {
            self.0.violated.iter().map(String::as_str).collect()
        }
    }

    /// Whether the body takes the registered `quota-exceeded` type: a
    /// refusal by a rate limit, quota or concurrency limit.
    fn quota_exceeded(&self) -> bool {
        !self.0.previous_type
            && matches!(
                self.0.kind,
                RejectionKind::RateLimited
                    | RejectionKind::QuotaExceeded
                    | RejectionKind::ConcurrencyLimited
            )
    }

    /// What was refused.
    pub fn kind(&self) -> RejectionKind {
        self.0.kind
    }

    /// The HTTP status this rejection renders with.
    pub fn http_status(&self) -> StatusCode {
        self.0.status
    }

    /// The limit, when known.
    pub fn limit(&self) -> Option<u64> {
        self.0.limit
    }

    /// The current usage, when known.
    pub fn current_usage(&self) -> Option<u64> {
        self.0.usage
    }

    /// The policy name, when known.
    pub fn policy_name(&self) -> Option<&str> {
        self.0.policy.as_deref()
    }

    /// The tenant, when known.
    pub fn tenant_id(&self) -> Option<&TenantId> {
        self.0.tenant.as_ref()
    }

    fn detail_text(&self) -> String {
        if !self.0.detail.is_empty() {
            return self.0.detail.clone();
        }
        let tenant = self.0.tenant.as_ref().map(TenantId::as_str).unwrap_or("");
        match self.0.kind {
            RejectionKind::TenantRequired => "no tenant found in the request".into(),
            RejectionKind::MalformedTenantId => "the tenant id is malformed".into(),
            RejectionKind::UnknownTenant => format!("tenant {tenant:?} is unknown"),
            RejectionKind::TenantInactive(s) => format!("tenant {tenant:?} is {s}"),
            RejectionKind::TenantNotPermitted => {
                format!("the caller may not act for tenant {tenant:?}")
            }
            RejectionKind::FeatureNotInPlan => format!(
                "feature {:?} is not included in plan {:?}",
                self.0.feature.as_deref().unwrap_or(""),
                self.0.plan.as_deref().unwrap_or("")
            ),
            RejectionKind::ResourceLimitReached
            | RejectionKind::RateLimited
            | RejectionKind::QuotaExceeded
            | RejectionKind::ConcurrencyLimited => {
                let policy = self.0.policy.as_deref().unwrap_or("");
                match (self.0.limit, self.0.usage) {
                    (Some(l), Some(u)) => format!("{policy}: {u} of {l} used"),
                    _ => format!("{policy}: limit reached"),
                }
            }
            RejectionKind::Unavailable => "a backing service is unavailable; retry later".into(),
        }
    }

    fn retry_after_secs(&self) -> Option<u64> {
        self.0.retry_after.map(ceil_secs).map(|s| s.max(1))
    }

    /// The problem+json body (RFC 9457). Refusals by a rate limit, quota or
    /// concurrency limit are of the registered type
    /// [`QUOTA_EXCEEDED_TYPE`] with the extension member
    /// `violated-policies`; the others of type
    /// `urn:tower-tenancy:problem:<code>`. All carry `code` and, where
    /// known, `tenant`, `policy`, `limit`, `usage`, `retry_after`.
    pub fn problem_json(&self) -> Bytes {
        let detail = self.detail_text();
        let quota_exceeded = self.quota_exceeded();
        let problem = Problem {
            type_: if quota_exceeded {
                QUOTA_EXCEEDED_TYPE.to_owned()
            } else {
                format!("urn:tower-tenancy:problem:{}", self.0.kind.code())
            },
            title: if quota_exceeded {
                QUOTA_EXCEEDED_TITLE
            } else {
                self.0.kind.title()
            },
            status: self.0.status.as_u16(),
            detail: &detail,
            code: self.0.kind.code(),
            tenant: self.0.tenant.as_ref().map(TenantId::as_str),
            status_of_tenant: match self.0.kind {
                RejectionKind::TenantInactive(s) => Some(s.as_str()),
                _ => None,
            },
            plan: self.0.plan.as_deref(),
            feature: self.0.feature.as_deref(),
            policy: self.0.policy.as_deref(),
            limit: self.0.limit,
            usage: self.0.usage,
            retry_after: self.retry_after_secs(),
            violated_policies: quota_exceeded.then(|| self.violated()),
        };
        // Serializing this struct of strings and integers cannot fail.
        Bytes::from(serde_json::to_vec(&problem).unwrap_or_default())
    }

    /// Renders the rejection: problem+json for HTTP, a trailers-only response
    /// with `grpc-status`/`grpc-message` when `grpc` is true (and, with the
    /// `tonic` feature, `grpc-status-details-bin`: see
    /// [`grpc`](crate::grpc#rich-error-details)). Both carry `Retry-After`
    /// (when known) and the rate-limit fields.
    pub fn to_response(&self, grpc: bool) -> Response<Bytes> {
        self.render(grpc, self.0.rate_limit.clone())
    }

    /// [`to_response`](Self::to_response), moving the rate-limit fields out.
    fn into_response(mut self, grpc: bool) -> Response<Bytes> {
        let fields = self.0.rate_limit.take();
        self.render(grpc, fields)
    }

    fn render(&self, grpc: bool, fields: Option<RateLimitHeaders>) -> Response<Bytes> {
        let mut response = if grpc {
            let mut r = Response::new(Bytes::new());
            let h = r.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            h.insert(
                HeaderName::from_static("grpc-status"),
                HeaderValue::from(u16::from(self.0.kind.grpc_code())),
            );
            if let Ok(v) = HeaderValue::from_str(&grpc_percent_encode(&self.detail_text())) {
                h.insert(HeaderName::from_static("grpc-message"), v);
            }
            #[cfg(feature = "tonic")]
            if let Some(details) = grpc_details::status_details(self) {
                h.insert(HeaderName::from_static("grpc-status-details-bin"), details);
            }
            r
        } else {
            let mut r = Response::new(self.problem_json());
            *r.status_mut() = self.0.status;
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            );
            r
        };
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after_secs() {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(fields) = fields {
            fields.write(headers);
        }
        response
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0.kind.code(), self.detail_text())
    }
}

impl std::error::Error for Rejection {}

/// A rejection on its way to the client: kept small (two words) inside the
/// layers' response futures and rendered when the future is polled.
#[derive(Debug)]
pub(crate) struct Refusal {
    rejection: Rejection,
    grpc: bool,
}

impl Refusal {
    /// Records `rejection` (tracing, metrics) and keeps it for rendering.
    pub(crate) fn new(rejection: Rejection, grpc: bool) -> Self {
        crate::observe::rejected(&rejection);
        Self { rejection, grpc }
    }

    /// The rendered response.
    pub(crate) fn into_response(self) -> Response<Bytes> {
        self.rejection.into_response(self.grpc)
    }
}

/// Whether a request is gRPC (`content-type: application/grpc*`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

/// Percent-encodes a grpc-message per the gRPC HTTP/2 spec.
fn grpc_percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(grpc_percent_encode("a%b\né"), "a%25b%0A%C3%A9");
    }

    #[test]
    fn statuses() {
        let r = Rejection::new(RejectionKind::RateLimited)
            .policy("api")
            .usage(60, 60)
            .retry_after(Duration::from_millis(1500));
        let resp = r.to_response(false);
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()[RETRY_AFTER], "2");
        let body: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(body["limit"], 60);
        assert_eq!(body["usage"], 60);
        assert_eq!(body["type"], QUOTA_EXCEEDED_TYPE);
        assert_eq!(body["violated-policies"], serde_json::json!(["api"]));
        assert_eq!(body["code"], "rate_limited");
        let other: serde_json::Value =
            serde_json::from_slice(&Rejection::new(RejectionKind::UnknownTenant).problem_json())
                .unwrap();
        assert_eq!(other["type"], "urn:tower-tenancy:problem:unknown_tenant");
        assert!(other.get("violated-policies").is_none());
        let g = r.to_response(true);
        assert_eq!(g.status(), 200);
        assert_eq!(g.headers()["grpc-status"], "8");
        assert!(g.body().is_empty());
        assert_eq!(
            Rejection::new(RejectionKind::Unavailable)
                .to_response(true)
                .headers()["grpc-status"],
            "14"
        );
    }
}
