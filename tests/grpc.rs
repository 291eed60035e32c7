//! The layers on a real tonic server (free loopback port), called by a real
//! tonic client: statuses, messages and metadata as a gRPC client sees them,
//! the interceptor, and concurrency slots held by server streams.
#![cfg(feature = "tonic")]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_stream::{Stream, StreamExt};
use tonic::service::InterceptorLayer;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tower_tenancy::directory::{LookupResult, TenantDirectory};
use tower_tenancy::future::MaybeReady;
use tower_tenancy::grpc::{TenantInterceptor, TenantRequestExt};
use tower_tenancy::layer::admission::{AdmissionLayer, Rule};
use tower_tenancy::layer::feature::RequireFeatureLayer;
use tower_tenancy::layer::limit::ResourceLimitLayer;
use tower_tenancy::resolve::HeaderResolver;
use tower_tenancy::store::{
    Admission, Check, CounterStore, Decisions, ManualClock, MemoryStore, StoreError, StoreResult,
};
use tower_tenancy::{Catalog, MemoryDirectory, TenancyLayer, Tenant, TenantId};

const SERVING: i32 = 1;

const CATALOG: &str = r#"
[[plans]]
name = "free"
features = []
limits = { things = 5 }
rates = { calls = { limit = 3, window = "1m" } }
quotas = { daily = { limit = 2, period = "day" } }
concurrency = { streams = { limit = 1 } }

[[plans]]
name = "pro"
features = ["health"]
limits = { things = 50 }
rates = { calls = { limit = 1000, window = "1m" } }
quotas = { daily = { limit = 1000, period = "day" } }
concurrency = { streams = { limit = 1 } }

[[tenants]]
id = "acme"
plan = "free"
[[tenants]]
id = "globex"
plan = "pro"
[[tenants]]
id = "umbrella"
plan = "pro"
status = "suspended"
[[tenants]]
id = "hooli"
plan = "pro"
status = "expired"
[[tenants]]
id = "pied-piper"
plan = "pro"
status = "deleted"
"#;

fn directory() -> MemoryDirectory {
    MemoryDirectory::from_catalog(&Catalog::from_toml_str(CATALOG).unwrap())
}

fn tenancy() -> TenancyLayer {
    TenancyLayer::new(HeaderResolver::new("x-tenant-id"), directory())
}

/// A server on 127.0.0.1:<free port>, stopped when dropped.
struct GrpcServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrpcServer {
    async fn client(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel().await)
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

/// Serves a `tonic::transport::server::Router` on a free port.
macro_rules! serve {
    ($router:expr) => {{
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = $router;
        let task = tokio::spawn(async move {
            router
                .serve_with_incoming(TcpIncoming::from(listener))
                .await
                .unwrap();
        });
        GrpcServer { addr, task }
    }};
}

/// A request for `service` with an optional `x-tenant-id`.
fn req(tenant: Option<&str>, service: &str) -> Request<HealthCheckRequest> {
    let mut req = Request::new(HealthCheckRequest {
        service: service.into(),
    });
    if let Some(t) = tenant {
        req.metadata_mut()
            .insert("x-tenant-id", t.parse().expect("ASCII metadata"));
    }
    req
}

fn check_req(tenant: &str) -> Request<HealthCheckRequest> {
    req(Some(tenant), "")
}

fn meta<'a>(status: &'a Status, key: &str) -> Option<&'a str> {
    status.metadata().get(key).and_then(|v| v.to_str().ok())
}

/// RateLimit: "name";r=12;t=30 → (name, r, t)
fn parse_ratelimit(value: &str) -> (String, u64, u64) {
    let mut parts = value.split(';');
    let name = parts.next().unwrap().trim_matches('"').to_string();
    let (mut r, mut t) = (None, None);
    for p in parts {
        match p.split_once('=').unwrap() {
            ("r", v) => r = Some(v.parse().unwrap()),
            ("t", v) => t = Some(v.parse().unwrap()),
            _ => {}
        }
    }
    (name, r.expect("r"), t.expect("t"))
}

/// A Health service that reports what it saw: the tenant (`x-seen-tenant`)
/// and, when a `CurrentTenant` is there, its plan (`x-seen-plan`). `Watch`
/// with service `finite:N` sends N messages and ends; otherwise it sends one
/// and stays open.
struct Probe;

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for Probe {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        if request.get_ref().service == "fail" {
            return Err(Status::not_found("service not registered"));
        }
        let mut response = Response::new(HealthCheckResponse { status: SERVING });
        if let Some(id) = request.tenant_id() {
            response
                .metadata_mut()
                .insert("x-seen-tenant", id.as_str().parse().unwrap());
        }
        if let Some(tenant) = request.current_tenant() {
            response
                .metadata_mut()
                .insert("x-seen-plan", tenant.plan().name.parse().unwrap());
        }
        Ok(response)
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let item = || Ok(HealthCheckResponse { status: SERVING });
        let stream: WatchStream = match request.get_ref().service.strip_prefix("finite:") {
            Some(n) => {
                let n: usize = n.parse().map_err(|_| Status::invalid_argument("n"))?;
                Box::pin(tokio_stream::iter((0..n).map(move |_| item())))
            }
            None => Box::pin(tokio_stream::once(item()).chain(tokio_stream::pending())),
        };
        Ok(Response::new(stream))
    }
}

fn seen<'a, T>(response: &'a Response<T>, key: &str) -> Option<&'a str> {
    response.metadata().get(key).and_then(|v| v.to_str().ok())
}

/// Calls `Check` until it succeeds; panics after 5 s.
async fn until_admitted(client: &mut HealthClient<Channel>, tenant: &str) -> Duration {
    let start = tokio::time::Instant::now();
    loop {
        match client.check(check_req(tenant)).await {
            Ok(_) => return start.elapsed(),
            Err(s) if s.code() == Code::ResourceExhausted => {}
            Err(s) => panic!("unexpected status {s:?}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "concurrency slot not released within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn tenancy_layer_on_the_real_health_service() {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let server = serve!(Server::builder().layer(tenancy()).add_service(health));
    let mut client = server.client().await;

    // Success: the real service answers SERVING.
    let ok = client.check(check_req("acme")).await.unwrap();
    assert_eq!(ok.get_ref().status, SERVING);

    // Each refusal, as the tonic client sees it: code and message.
    let cases: &[(Option<&str>, Code, &str)] = &[
        (None, Code::InvalidArgument, "no tenant found in the request"),
        (
            Some("../etc"),
            Code::InvalidArgument,
            "malformed tenant id in header x-tenant-id: tenant id contains a character outside [A-Za-z0-9._-] at byte 2",
        ),
        (
            Some("a b"),
            Code::InvalidArgument,
            "malformed tenant id in header x-tenant-id: tenant id contains a character outside [A-Za-z0-9._-] at byte 1",
        ),
        (Some(""), Code::InvalidArgument, "malformed tenant id in header x-tenant-id: tenant id is empty"),
        (Some("nobody"), Code::PermissionDenied, "tenant \"nobody\" is unknown"),
        (Some("umbrella"), Code::PermissionDenied, "tenant \"umbrella\" is suspended"),
        (Some("hooli"), Code::PermissionDenied, "tenant \"hooli\" is expired"),
        (Some("pied-piper"), Code::PermissionDenied, "tenant \"pied-piper\" is deleted"),
    ];
    for (tenant, code, message) in cases {
        let status = client.check(req(*tenant, "")).await.unwrap_err();
        assert_eq!(status.code(), *code, "{tenant:?}: {status:?}");
        assert_eq!(status.message(), *message, "{tenant:?}");
        // Streaming calls are refused the same way, before any message.
        let status = client.watch(req(*tenant, "")).await.unwrap_err();
        assert_eq!(status.code(), *code, "watch {tenant:?}: {status:?}");
    }

    // Duplicated metadata is ambiguous, not first-wins.
    let mut dup = check_req("acme");
    dup.metadata_mut()
        .append("x-tenant-id", "globex".parse().unwrap());
    let status = client.check(dup).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("given more than once"),
        "{status:?}"
    );

    // The connection survives refusals.
    assert_eq!(
        client
            .check(check_req("globex"))
            .await
            .unwrap()
            .get_ref()
            .status,
        SERVING
    );
}

#[tokio::test]
async fn rejections_are_trailers_only_responses() {
    // Below tonic: a raw HTTP/2 request, to see the wire format.
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let (_reporter, health) = tonic_health::server::health_reporter();
    let server = serve!(Server::builder().layer(tenancy()).add_service(health));
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<bytes::Bytes>>();
    let request = http::Request::post(format!(
        "http://{}/grpc.health.v1.Health/Check",
        server.addr
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("x-tenant-id", "nobody")
    .body(Full::new(bytes::Bytes::from_static(&[0, 0, 0, 0, 0])))
    .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/grpc");
    assert_eq!(response.headers()["grpc-status"], "7");
    assert_eq!(
        response.headers()["grpc-message"],
        "tenant \"nobody\" is unknown"
    );
    let collected = response.into_body().collect().await.unwrap();
    assert!(collected.trailers().is_none(), "no separate trailers frame");
    assert!(collected.to_bytes().is_empty(), "no message");
}

#[tokio::test]
async fn handler_sees_the_current_tenant() {
    let server = serve!(Server::builder()
        .layer(tenancy())
        .add_service(HealthServer::new(Probe)));
    let mut client = server.client().await;
    let ok = client.check(check_req("globex")).await.unwrap();
    assert_eq!(seen(&ok, "x-seen-tenant"), Some("globex"));
    assert_eq!(seen(&ok, "x-seen-plan"), Some("pro"));
}

#[tokio::test]
async fn feature_gate() {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let server = serve!(Server::builder()
        .layer(tenancy())
        .layer(RequireFeatureLayer::new("health"))
        .add_service(health));
    let mut client = server.client().await;
    assert_eq!(
        client
            .check(check_req("globex"))
            .await
            .unwrap()
            .get_ref()
            .status,
        SERVING
    );
    let status = client.check(check_req("acme")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "feature \"health\" is not included in plan \"free\""
    );
}

/// 2026-12-03T10:00:30Z: 30 s into a minute, 13 h 59 min 30 s before midnight.
const T0: u64 = 1_796_292_030_000;

/// The stores run on a manual clock: exact fields, and the refused call
/// passes at exactly now + `retry-after`.
#[tokio::test]
async fn rate_limit_and_quota_exhausted_with_metadata() {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let clock = Arc::new(ManualClock::new(T0));
    let store = Arc::new(MemoryStore::with_clock(clock.clone()));
    let server = serve!(Server::builder()
        .layer(tenancy())
        .layer(AdmissionLayer::new(store.clone()).rule(Rule::rate("calls")))
        .add_service(health));
    let mut client = server.client().await;

    // acme: 3 calls per minute; the fields arrive as response metadata.
    for remaining in [2, 1, 0] {
        let ok = client.check(check_req("acme")).await.unwrap();
        assert_eq!(seen(&ok, "ratelimit-policy"), Some("\"calls\";q=3;w=60"));
        let (name, r, t) = parse_ratelimit(seen(&ok, "ratelimit").unwrap());
        assert_eq!((name.as_str(), r), ("calls", remaining));
        assert!(t <= 68, "up to W + W/8 (sub-bucket window)");
    }
    let status = client.check(check_req("acme")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), "calls: 3 of 3 used");
    assert_eq!(
        meta(&status, "ratelimit-policy"),
        Some("\"calls\";q=3;w=60")
    );
    let (name, r, t) = parse_ratelimit(meta(&status, "ratelimit").unwrap());
    assert_eq!((name.as_str(), r), ("calls", 0));
    let retry: u64 = meta(&status, "retry-after").unwrap().parse().unwrap();
    // Sub-bucket window: until the oldest bucket has left it (≤ W + W/8).
    assert!((1..=68).contains(&retry), "retry-after {retry}");
    // Draft-11 §6: Retry-After is never earlier than the effective window.
    assert!((1..=retry).contains(&t), "t {t}, retry-after {retry}");
    // Other tenants have their own counters.
    client.check(check_req("globex")).await.unwrap();
    // The call passes at exactly now + retry-after.
    clock.advance_ms(retry * 1000);
    client.check(check_req("acme")).await.unwrap();

    // A calendar quota (separate server, fresh store): 2 a day.
    let (_reporter, health) = tonic_health::server::health_reporter();
    let clock = Arc::new(ManualClock::new(T0));
    let server = serve!(Server::builder()
        .layer(tenancy())
        .layer(
            AdmissionLayer::new(MemoryStore::with_clock(clock.clone())).rule(Rule::quota("daily"))
        )
        .add_service(health));
    let mut client = server.client().await;
    client.check(check_req("acme")).await.unwrap();
    client.check(check_req("acme")).await.unwrap();
    let status = client.check(check_req("acme")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.message(), "daily: 2 of 2 used");
    let midnight = T0 - T0 % 86_400_000 + 86_400_000;
    let to_midnight = (midnight - T0) / 1000;
    assert_eq!(
        meta(&status, "retry-after"),
        Some(to_midnight.to_string().as_str())
    );
    let (_, r, t) = parse_ratelimit(meta(&status, "ratelimit").unwrap());
    assert_eq!((r, t), (0, to_midnight));
    clock.set_ms(midnight - 1);
    let status = client.check(check_req("acme")).await.unwrap_err();
    assert_eq!(meta(&status, "retry-after"), Some("1"));
    clock.set_ms(midnight);
    client.check(check_req("acme")).await.unwrap();
}

#[tokio::test]
async fn resource_limit_is_resource_exhausted() {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let limit = ResourceLimitLayer::new("things", |tenant: Arc<Tenant>, _: Arc<str>| async move {
        // acme (free, limit 5) already has 5; globex (pro, limit 50) has 5 too.
        let _ = tenant;
        Ok::<u64, std::convert::Infallible>(5)
    });
    let server = serve!(Server::builder()
        .layer(tenancy())
        .layer(limit)
        .add_service(health));
    let mut client = server.client().await;
    client.check(check_req("globex")).await.unwrap();
    let status = client.check(check_req("acme")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.message(), "things: 5 of 5 used");
}

#[tokio::test]
async fn gauge_is_resource_exhausted_and_given_back_on_grpc_errors() {
    // acme (free) may create 5 "things"; each call reserves one.
    let server = serve!(Server::builder()
        .layer(tenancy())
        .layer(AdmissionLayer::new(MemoryStore::new()).rule(Rule::gauge("things")))
        .add_service(HealthServer::new(Probe)));
    let mut client = server.client().await;
    // Calls that fail in the handler (HTTP 200, grpc-status 5) give their unit back.
    for _ in 0..6 {
        let status = client.check(req(Some("acme"), "fail")).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
    }
    for _ in 0..5 {
        client.check(check_req("acme")).await.unwrap();
    }
    let status = client.check(check_req("acme")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.message(), "things: 5 of 5 used");
}

/// A store that is down.
struct DownStore;

impl CounterStore for DownStore {
    fn admit(&self, _: &TenantId, _: &[Check]) -> MaybeReady<StoreResult<Admission>> {
        MaybeReady::ready(Err(StoreError::Backend("connection refused".into())))
    }
    fn peek(&self, _: &TenantId, _: &[Check]) -> MaybeReady<StoreResult<Decisions>> {
        MaybeReady::ready(Err(StoreError::Backend("connection refused".into())))
    }
    fn adjust(&self, _: &TenantId, _: &str, _: i64) -> MaybeReady<StoreResult<u64>> {
        MaybeReady::ready(Err(StoreError::Backend("connection refused".into())))
    }
}

/// A directory that is down (answers asynchronously, with an error).
struct DownDirectory;

impl TenantDirectory for DownDirectory {
    fn lookup(&self, _: &TenantId) -> MaybeReady<LookupResult> {
        MaybeReady::boxed(async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Err(tower_tenancy::directory::DirectoryError(
                "database unreachable".into(),
            ))
        })
    }
}

#[tokio::test]
async fn store_or_directory_down_is_unavailable() {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let server = serve!(Server::builder()
        .layer(tenancy())
        .layer(AdmissionLayer::new(DownStore).rule(Rule::rate("calls")))
        .add_service(health));
    let mut client = server.client().await;
    let status = client.check(check_req("acme")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status.message(),
        "a backing service is unavailable; retry later"
    );
    assert!(
        !status.message().contains("refused"),
        "internal detail leaked"
    );
    assert_eq!(meta(&status, "retry-after"), Some("1"));

    let (_reporter, health) = tonic_health::server::health_reporter();
    let server = serve!(Server::builder()
        .layer(TenancyLayer::new(
            HeaderResolver::new("x-tenant-id"),
            DownDirectory
        ))
        .add_service(health));
    let mut client = server.client().await;
    let status = client.check(check_req("acme")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        !status.message().contains("database"),
        "internal detail leaked"
    );
}

#[tokio::test]
async fn interceptor_per_service_and_server_wide() {
    // Per service, on the generated server.
    let server = serve!(
        Server::builder().add_service(HealthServer::with_interceptor(
            Probe,
            TenantInterceptor::new()
        ))
    );
    let mut client = server.client().await;
    let ok = client.check(check_req("acme")).await.unwrap();
    assert_eq!(seen(&ok, "x-seen-tenant"), Some("acme"));
    assert_eq!(seen(&ok, "x-seen-plan"), None, "no directory lookup");
    // What it cannot do: unknown and suspended tenants pass (no directory).
    let ok = client.check(check_req("nobody")).await.unwrap();
    assert_eq!(seen(&ok, "x-seen-tenant"), Some("nobody"));
    client.check(check_req("umbrella")).await.unwrap();
    // What it refuses: missing and malformed ids, with the layer's messages.
    let status = client.check(req(None, "")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "no tenant found in the request");
    let status = client.check(check_req("../etc")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "malformed tenant id in metadata x-tenant-id: tenant id contains a character outside [A-Za-z0-9._-] at byte 2"
    );
    let status = client.watch(req(None, "")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // Server-wide, as a layer, with another key, optional, in front of the
    // real health service.
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let mut interceptor = TenantInterceptor::new().key("x-org").optional();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let server = serve!(Server::builder()
        .layer(InterceptorLayer::new(move |req: Request<()>| {
            use tonic::service::Interceptor;
            let req = interceptor.call(req)?;
            if req.tenant_id().is_some() {
                counted.fetch_add(1, Ordering::SeqCst);
            }
            Ok(req)
        }))
        .add_service(health));
    let mut client = server.client().await;
    let mut with_org = req(None, "");
    with_org
        .metadata_mut()
        .insert("x-org", "acme".parse().unwrap());
    assert_eq!(
        client.check(with_org).await.unwrap().get_ref().status,
        SERVING
    );
    assert_eq!(
        client.check(req(None, "")).await.unwrap().get_ref().status,
        SERVING
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let mut bad = req(None, "");
    bad.metadata_mut().insert("x-org", "-x".parse().unwrap());
    assert_eq!(
        client.check(bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

fn admission_server_layers() -> AdmissionLayer<Arc<MemoryStore>> {
    AdmissionLayer::new(Arc::new(MemoryStore::new()))
        .rule(Rule::rate("calls"))
        .rule(Rule::concurrency("streams"))
}

#[tokio::test]
async fn unary_calls_release_their_slot() {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let server = serve!(Server::builder()
        .layer(tenancy())
        .layer(admission_server_layers())
        .add_service(health));
    let mut client = server.client().await;
    // Limit 1 in flight: sequential calls all pass, so each released its slot.
    for _ in 0..20 {
        assert_eq!(
            client
                .check(check_req("globex"))
                .await
                .unwrap()
                .get_ref()
                .status,
            SERVING
        );
    }
}

#[tokio::test]
async fn a_server_stream_holds_its_slot_until_cancelled() {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let server = serve!(Server::builder()
        .layer(tenancy())
        .layer(admission_server_layers())
        .add_service(health));
    let mut client = server.client().await;

    // The real Watch stream stays open.
    let mut stream = client
        .watch(check_req("globex"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().status, SERVING);

    // While it is open, the tenant's only slot is taken.
    let status = client.watch(check_req("globex")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), "streams: 1 of 1 used");
    let status = client.check(check_req("globex")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(meta(&status, "retry-after"), Some("1"));
    // Still refused a while later: the stream's whole life, not its first message.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        client.check(check_req("globex")).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    // Another tenant is not affected.
    client.check(check_req("acme")).await.unwrap();

    // The client cancels the stream (drops it; the connection stays up).
    drop(stream);
    until_admitted(&mut client, "globex").await;

    // Again, and this time the whole connection goes away.
    let mut other = server.client().await;
    let mut stream = other.watch(check_req("globex")).await.unwrap().into_inner();
    stream.message().await.unwrap().unwrap();
    assert_eq!(
        client.check(check_req("globex")).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    drop(stream);
    drop(other);
    until_admitted(&mut client, "globex").await;
}

#[tokio::test]
async fn a_completed_server_stream_releases_its_slot() {
    let server = serve!(Server::builder()
        .layer(tenancy())
        .layer(admission_server_layers())
        .add_service(HealthServer::new(Probe)));
    let mut client = server.client().await;

    let mut stream = client
        .watch(req(Some("globex"), "finite:3"))
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(msg) = stream.message().await.unwrap() {
        assert_eq!(msg.status, SERVING);
        n += 1;
    }
    assert_eq!(n, 3);
    // The stream ended with OK: the slot is free (no cancellation involved).
    until_admitted(&mut client, "globex").await;

    // An open Probe stream holds it, like the real one.
    let mut open = client
        .watch(req(Some("globex"), "forever"))
        .await
        .unwrap()
        .into_inner();
    open.message().await.unwrap().unwrap();
    assert_eq!(
        client
            .watch(req(Some("globex"), "finite:1"))
            .await
            .unwrap_err()
            .code(),
        Code::ResourceExhausted
    );
    drop(open);
    until_admitted(&mut client, "globex").await;
}
