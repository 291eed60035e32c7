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
    rate_limit: Option<RateLimitFields>,
}

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
        }))
    }

    /// Replaces the HTTP status (for example 404 for unknown tenants).
    pub fn status(mut self, status: StatusCode) -> Self {
        self.0.status = status;
        self
    }

    /// Sets the human-readable detail. Never put internal errors here.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.0.detail = detail.into();
        self
    }

    /// Names the tenant.
    pub fn tenant(mut self, tenant: TenantId) -> Self {
        self.0.tenant = Some(tenant);
        self
    }

    /// Names the tenant's plan.
    pub fn plan(mut self, plan: impl Into<String>) -> Self {
        self.0.plan = Some(plan.into());
        self
    }

    /// Names the missing feature.
    pub fn feature(mut self, feature: impl Into<String>) -> Self {
        self.0.feature = Some(feature.into());
        self
    }

    /// Names the policy (limit, rate, quota or concurrency rule).
    pub fn policy(mut self, policy: impl Into<String>) -> Self {
        self.0.policy = Some(policy.into());
        self
    }

    /// Sets the limit and the current usage.
    pub fn usage(mut self, limit: u64, usage: u64) -> Self {
        self.0.limit = Some(limit);
        self.0.usage = Some(usage);
        self
    }

    /// Sets the `Retry-After` delay (rounded up to whole seconds, at least 1).
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.0.retry_after = Some(after);
        self
    }

    /// Attaches rate-limit header fields.
    pub fn rate_limit(mut self, fields: RateLimitFields) -> Self {
        self.0.rate_limit = Some(fields);
        self
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

    /// The problem+json body (RFC 9457).
    pub fn problem_json(&self) -> Bytes {
        let detail = self.detail_text();
        let problem = Problem {
            type_: format!("urn:tower-tenancy:problem:{}", self.0.kind.code()),
            title: self.0.kind.title(),
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
        };
        // Serializing this struct of strings and integers cannot fail.
        Bytes::from(serde_json::to_vec(&problem).unwrap_or_default())
    }

    /// Renders the rejection: problem+json for HTTP, a trailers-only response
    /// with `grpc-status`/`grpc-message` when `grpc` is true. Both carry
    /// `Retry-After` (when known) and the rate-limit fields.
    pub fn to_response(&self, grpc: bool) -> Response<Bytes> {
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
        if let Some(fields) = &self.0.rate_limit {
            fields.apply(headers);
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

/// Whether a request is gRPC (`content-type: application/grpc*`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The number of decimal digits of `n`.
fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Appends `"name"`.
fn quoted(out: &mut Vec<u8>, name: &[u8]) {
    out.push(b'"');
    out.extend_from_slice(name);
    out.push(b'"');
}

/// Appends the decimal digits of `n` (two at a time).
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        digits[i] = b'0' + n as u8;
    }
    out.extend_from_slice(&digits[i..]);
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

/// Which rate-limit header fields to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderStyle {
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
    #[default]
    Ietf,
    /// The IETF fields and the legacy `X-RateLimit-Limit/Remaining/Reset`.
    IetfAndLegacy,
    /// No rate-limit fields (`Retry-After` is still sent on 429).
    None,
}

/// The rate-limit state of one policy, rendered as
/// `RateLimit-Policy: "name";q=60;w=60` and `RateLimit: "name";r=12;t=30`.
///
/// ```
/// use std::time::Duration;
/// use http::HeaderMap;
/// use tower_tenancy::reject::{HeaderStyle, RateLimitFields};
///
/// let fields = RateLimitFields {
///     policy: "api_calls_per_minute".into(),
///     limit: 60,
///     remaining: 12,
///     reset: Duration::from_secs(30),
///     window: Some(Duration::from_secs(60)),
///     style: HeaderStyle::Ietf,
/// };
/// let mut headers = HeaderMap::new();
/// fields.apply(&mut headers);
/// assert_eq!(headers["ratelimit-policy"], "\"api_calls_per_minute\";q=60;w=60");
/// assert_eq!(headers["ratelimit"], "\"api_calls_per_minute\";r=12;t=30");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitFields {
    /// Policy name (a valid rule name: safe inside a quoted string).
    pub policy: String,
    /// Quota units per window.
    pub limit: u64,
    /// Units left.
    pub remaining: u64,
    /// Time until the quota resets.
    pub reset: Duration,
    /// Window length, when the policy has one.
    pub window: Option<Duration>,
    /// Which fields to render.
    pub style: HeaderStyle,
}

impl RateLimitFields {
    /// Writes the fields into `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        if self.style == HeaderStyle::None {
            return;
        }
        let reset = ceil_secs(self.reset);
        // Written byte by byte into buffers of the right size, each handed to
        // the header value without a copy: this runs on every metered
        // response (`format!` cost about as much as the rest of admission).
        // Exact capacities: a full `Vec` becomes `Bytes` without another
        // allocation.
        let name = self.policy.as_bytes();
        let window = self.window.map(ceil_secs);
        let policy_len =
            name.len() + 2 + 3 + digits(self.limit) + window.map_or(0, |w| 3 + digits(w));
        let mut policy = Vec::with_capacity(policy_len);
        quoted(&mut policy, name);
        policy.extend_from_slice(b";q=");
        push_u64(&mut policy, self.limit);
        if let Some(w) = window {
            policy.extend_from_slice(b";w=");
            push_u64(&mut policy, w);
        }
        let state_len = name.len() + 2 + 3 + digits(self.remaining) + 3 + digits(reset);
        let mut state = Vec::with_capacity(state_len);
        quoted(&mut state, name);
        state.extend_from_slice(b";r=");
        push_u64(&mut state, self.remaining);
        state.extend_from_slice(b";t=");
        push_u64(&mut state, reset);
        if let (Ok(p), Ok(s)) = (
            HeaderValue::from_maybe_shared(Bytes::from(policy)),
            HeaderValue::from_maybe_shared(Bytes::from(state)),
        ) {
            headers.insert(RATELIMIT_POLICY, p);
            headers.insert(RATELIMIT, s);
        }
        if self.style == HeaderStyle::IetfAndLegacy {
            headers.insert(
                HeaderName::from_static("x-ratelimit-limit"),
                HeaderValue::from(self.limit),
            );
            headers.insert(
                HeaderName::from_static("x-ratelimit-remaining"),
                HeaderValue::from(self.remaining),
            );
            headers.insert(
                HeaderName::from_static("x-ratelimit-reset"),
                HeaderValue::from(reset),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_digits() {
        for n in [
            0,
            7,
            10,
            99,
            100,
            101,
            1_000,
            12_345,
            1_234_567_890,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
            assert_eq!(digits(n), out.len());
        }
    }

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
        assert_eq!(body["type"], "urn:tower-tenancy:problem:rate_limited");
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
