//! gRPC refusals carry `grpc-status-details-bin` (issue 13): a real tonic
//! client calls a real tonic server (free loopback port) and decodes the
//! details with tonic-types, as an application would.
#![cfg(feature = "tonic")]

use std::time::Duration;

use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_types::StatusExt;
use tower_tenancy::layer::admission::{AdmissionLayer, Rule};
use tower_tenancy::layer::feature::RequireFeatureLayer;
use tower_tenancy::reject::ERROR_DOMAIN;
use tower_tenancy::resolve::HeaderResolver;
use tower_tenancy::store::MemoryStore;
use tower_tenancy::{Catalog, MemoryDirectory, TenancyLayer};

const CATALOG: &str = r#"
[[plans]]
name = "free"
features = []
rates = { calls = { limit = 2, window = "1m" } }

[[plans]]
name = "pro"
features = ["health"]
rates = { calls = { limit = 1000, window = "1m" } }
quotas = { daily = { limit = 1, period = "day" } }

[[tenants]]
id = "acme"
plan = "pro"
[[tenants]]
id = "initech"
plan = "free"
[[tenants]]
id = "umbrella"
plan = "pro"
status = "suspended"
"#;

struct GrpcServer {
    channel: Channel,
    task: JoinHandle<()>,
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Health service behind tenancy → feature gate (`/health` for "pro") →
/// admission (rate `calls`, quota `daily`), on a free port.
async fn server(feature_gate: bool) -> GrpcServer {
    let catalog = Catalog::from_toml_str(CATALOG).unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tenancy = TenancyLayer::new(
        HeaderResolver::new("x-tenant-id"),
        MemoryDirectory::from_catalog(&catalog),
    );
    let admission = AdmissionLayer::new(MemoryStore::new())
        .rule(Rule::rate("calls"))
        .rule(Rule::quota("daily"));
    let task = if feature_gate {
        let router = Server::builder()
            .layer(tenancy)
            .layer(RequireFeatureLayer::new("health"))
            .layer(admission)
            .add_service(health);
        tokio::spawn(async move {
            router
                .serve_with_incoming(TcpIncoming::from(listener))
                .await
                .unwrap();
        })
    } else {
        let router = Server::builder()
            .layer(tenancy)
            .layer(admission)
            .add_service(health);
        tokio::spawn(async move {
            router
                .serve_with_incoming(TcpIncoming::from(listener))
                .await
                .unwrap();
        })
    };
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    GrpcServer { channel, task }
}

async fn call(server: &GrpcServer, tenant: &str) -> Result<(), Status> {
    let mut req = Request::new(HealthCheckRequest {
        service: String::new(),
    });
    req.metadata_mut()
        .insert("x-tenant-id", tenant.parse().unwrap());
    HealthClient::new(server.channel.clone())
        .check(req)
        .await
        .map(|_| ())
}

#[tokio::test]
async fn resource_exhausted_carries_retry_info_and_quota_failure() {
    let server = server(false).await;
    call(&server, "initech").await.unwrap();
    call(&server, "initech").await.unwrap();
    let status = call(&server, "initech").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    // The trailers-only response keeps its readable message.
    assert_eq!(status.message(), "calls: 2 of 2 used");

    let details = status.get_error_details();
    let retry = details
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo with a delay");
    let header: u64 = status
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        retry,
        Duration::from_secs(header),
        "RetryInfo equals Retry-After"
    );
    assert!((1..=68).contains(&header), "{header}");

    let violations = &details.quota_failure().expect("QuotaFailure").violations;
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].subject, "calls");
    assert_eq!(violations[0].description, "2 of 2 used");

    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "RATE_LIMITED");
    assert_eq!(info.domain, ERROR_DOMAIN);
    assert_eq!(info.metadata["tenant"], "initech");
    assert_eq!(info.metadata["policy"], "calls");
}

#[tokio::test]
async fn a_daily_quota_refusal_waits_until_the_period_ends() {
    let server = server(false).await;
    call(&server, "acme").await.unwrap();
    let status = call(&server, "acme").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    let details = status.get_error_details();
    let retry = details.retry_info().and_then(|r| r.retry_delay).unwrap();
    assert!(retry > Duration::ZERO && retry <= Duration::from_secs(86_400));
    assert_eq!(details.error_info().unwrap().reason, "QUOTA_EXCEEDED");
    assert_eq!(
        details.quota_failure().unwrap().violations[0].subject,
        "daily"
    );
}

#[tokio::test]
async fn other_refusals_carry_error_info() {
    let server = server(true).await;

    // Feature not in plan: reason, tenant, plan and feature.
    let status = call(&server, "initech").await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        r#"feature "health" is not included in plan "free""#
    );
    let details = status.get_error_details();
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "FEATURE_NOT_IN_PLAN");
    assert_eq!(info.domain, ERROR_DOMAIN);
    assert_eq!(info.metadata["tenant"], "initech");
    assert_eq!(info.metadata["plan"], "free");
    assert_eq!(info.metadata["feature"], "health");
    assert!(details.quota_failure().is_none() && details.retry_info().is_none());

    // Unknown and inactive tenants, a malformed id.
    for (tenant, code, reason) in [
        ("nobody", Code::PermissionDenied, "UNKNOWN_TENANT"),
        ("umbrella", Code::PermissionDenied, "TENANT_INACTIVE"),
        ("../etc", Code::InvalidArgument, "MALFORMED_TENANT_ID"),
    ] {
        let status = call(&server, tenant).await.unwrap_err();
        assert_eq!(status.code(), code, "{tenant}");
        let info = status
            .get_error_details()
            .error_info()
            .cloned()
            .expect("ErrorInfo");
        assert_eq!(info.reason, reason, "{tenant}");
        if reason != "MALFORMED_TENANT_ID" {
            assert_eq!(info.metadata["tenant"], tenant);
        } else {
            // The malformed value is never echoed.
            assert!(!info.metadata.contains_key("tenant"));
        }
    }
}
