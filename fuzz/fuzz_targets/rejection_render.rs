//! Rejection::to_response on arbitrary rejections: never panics; HTTP gives
//! problem+json with the right code and status, gRPC a valid grpc-status.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use http::StatusCode;
use libfuzzer_sys::fuzz_target;
use tower_tenancy::reject::{HeaderStyle, RateLimitFields, Rejection, RejectionKind};
use tower_tenancy::{TenantId, TenantStatus};

#[derive(Debug, Arbitrary)]
struct Input {
    kind: u8,
    status: Option<u16>,
    detail: Option<String>,
    tenant: Option<String>,
    plan: Option<String>,
    feature: Option<String>,
    policy: Option<String>,
    usage: Option<(u64, u64)>,
    retry_after: Option<(u64, u32)>,
    rate: Option<Rate>,
    grpc: bool,
}

#[derive(Debug, Arbitrary)]
struct Rate {
    policy: String,
    limit: u64,
    remaining: u64,
    reset: (u64, u32),
    window: Option<(u64, u32)>,
    style: u8,
}

const KINDS: [RejectionKind; 14] = [
    RejectionKind::TenantRequired,
    RejectionKind::MalformedTenantId,
    RejectionKind::UnknownTenant,
    RejectionKind::TenantInactive(TenantStatus::Active),
    RejectionKind::TenantInactive(TenantStatus::Suspended),
    RejectionKind::TenantInactive(TenantStatus::Expired),
    RejectionKind::TenantInactive(TenantStatus::Deleted),
    RejectionKind::TenantNotPermitted,
    RejectionKind::FeatureNotInPlan,
    RejectionKind::ResourceLimitReached,
    RejectionKind::RateLimited,
    RejectionKind::QuotaExceeded,
    RejectionKind::ConcurrencyLimited,
    RejectionKind::Unavailable,
];

/// Any duration, `Duration::MAX` included (rounding up once overflowed).
fn duration((secs, nanos): (u64, u32)) -> Duration {
    Duration::new(secs, nanos % 1_000_000_000)
}

fuzz_target!(|input: Input| {
    let kind = KINDS[usize::from(input.kind) % KINDS.len()];
    let mut r = Rejection::new(kind);
    let mut want_status = kind.default_status();
    if let Some(s) = input.status.and_then(|s| StatusCode::from_u16(s).ok()) {
        r = r.status(s);
        want_status = s;
    }
    if let Some(d) = input.detail {
        r = r.detail(d);
    }
    let tenant = input.tenant.and_then(|t| t.parse::<TenantId>().ok());
    if let Some(t) = &tenant {
        r = r.tenant(t.clone());
    }
    if let Some(p) = input.plan {
        r = r.plan(p);
    }
    if let Some(f) = input.feature {
        r = r.feature(f);
    }
    if let Some(p) = input.policy {
        r = r.policy(p);
    }
    if let Some((limit, usage)) = input.usage {
        r = r.usage(limit, usage);
    }
    if let Some(d) = input.retry_after {
        r = r.retry_after(duration(d));
    }
    if let Some(rate) = input.rate {
        let styles = [
            HeaderStyle::Ietf,
            HeaderStyle::IetfAndLegacy,
            HeaderStyle::None,
        ];
        r = r.rate_limit(RateLimitFields {
            policy: rate.policy,
            limit: rate.limit,
            remaining: rate.remaining,
            reset: duration(rate.reset),
            window: rate.window.map(duration),
            style: styles[usize::from(rate.style % 3)],
        });
    }
    let _ = r.to_string();
    let res = r.to_response(input.grpc);
    if input.grpc {
        assert_eq!(res.status(), StatusCode::OK);
        let code: u8 = res.headers()["grpc-status"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(code, kind.grpc_code());
        assert!([3, 7, 8, 14].contains(&code));
        if let Some(m) = res.headers().get("grpc-message") {
            assert!(m.as_bytes().iter().all(|b| (0x20..=0x7e).contains(b)));
        }
    } else {
        assert_eq!(res.status(), want_status);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(body["code"], kind.code());
        assert_eq!(body["status"], want_status.as_u16());
        if let Some(t) = &tenant {
            assert_eq!(body["tenant"], t.as_str());
        }
    }
});
