//! tower-tenancy on plain hyper 1 + hyper-util, no framework: the layers are
//! stacked with `tower::ServiceBuilder` around a `service_fn` and served with
//! `hyper_util::server::conn::auto` through `TowerToHyperService`.
//!
//! ```sh
//! cargo run --example hyper_server          # serves on 127.0.0.1:3001
//! curl -i localhost:3001/v1/me -H 'x-tenant-id: acme'
//! curl -N 'localhost:3001/v1/stream?chunks=5&interval_ms=500' -H 'x-tenant-id: acme'
//! curl -i localhost:3001/v1/me -H 'x-tenant-id: umbrella'      # 403, suspended
//! ```
//!
//! Environment: `ADDR` (default `127.0.0.1:3001`), `PLANS` (default the
//! shipped `examples/plans.toml`).
//!
//! The tenant comes from the `X-Tenant-ID` header, else the `tenant` query
//! parameter; every request needs one. Policies:
//!
//! | request | policies |
//! |---|---|
//! | every request | rate limit `api_calls_per_minute` |
//! | `GET /v1/stream?chunks=N&interval_ms=M` | also concurrency `concurrent_executions`: the slot is held until the streamed body ends (N chunks; `chunks=0` never ends) or the client goes away |
//! | `POST /v1/patterns` | feature `custom_patterns`, checked in the handler and refused with the crate's own [`Rejection`] rendering |
//!
//! Routes: `GET /v1/me` (the tenant and its plan as JSON), `GET /v1/stream`,
//! `POST /v1/patterns`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_stream::wrappers::IntervalStream;
use tokio_stream::StreamExt;
use tower::{Service, ServiceBuilder};
use tower_tenancy::layer::admission::{AdmissionLayer, Rule};
use tower_tenancy::reject::{Rejection, RejectionKind};
use tower_tenancy::resolve::{HeaderResolver, QueryResolver, ResolverChain};
use tower_tenancy::store::MemoryStore;
use tower_tenancy::{Catalog, CurrentTenant, MemoryDirectory, TenancyLayer};

/// The handler's response body.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_tenancy=info".into()),
        )
        .init();
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3001".into());
    let plans = std::env::var("PLANS")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/examples/plans.toml").into());
    let catalog = match Catalog::from_path(&plans) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot load {plans}: {e}");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {addr}: {e}");
            std::process::exit(2);
        }
    };
    let app = app(
        MemoryDirectory::from_catalog(&catalog),
        Arc::new(MemoryStore::new()),
    );
    println!(
        "hyper server on http://{addr} with {} tenants from {plans}",
        catalog.tenants().len()
    );
    println!("try: curl -i http://{addr}/v1/me -H 'x-tenant-id: acme'");
    println!(
        "     curl -N 'http://{addr}/v1/stream?chunks=5&interval_ms=500' -H 'x-tenant-id: acme'"
    );
    serve(listener, app).await;
}

/// The service: tenancy, then admission, then the handler.
pub fn app(
    directory: MemoryDirectory,
    store: Arc<MemoryStore>,
) -> impl Service<
    Request<Incoming>,
    Response = Response<impl http_body::Body<Data = Bytes, Error = Infallible> + Send + 'static>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
       + Send
       + 'static {
    ServiceBuilder::new()
        .layer(TenancyLayer::new(
            ResolverChain::new()
                .or(HeaderResolver::new("x-tenant-id"))
                .or(QueryResolver::new("tenant")),
            directory,
        ))
        // All counter rules in one layer: one store call per request.
        .layer(
            AdmissionLayer::new(store)
                .rule(Rule::rate("api_calls_per_minute"))
                .rule(
                    Rule::concurrency("concurrent_executions")
                        .skip_if(|head| head.uri.path() != "/v1/stream"),
                ),
        )
        .service_fn(handle)
}

/// Accepts connections on `listener` and serves `app` on each (HTTP/1.1 and
/// HTTP/2), until the process ends.
pub async fn serve<S, B>(listener: TcpListener, app: S)
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            // A client that goes away ends the connection: the response body
            // is dropped, and with it any concurrency slot it held.
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    // TenancyLayer refuses requests without a tenant, so it is always here.
    let Some(tenant) = req.extensions().get::<CurrentTenant>().cloned() else {
        return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, "no tenant"));
    };
    let response = match (req.method(), req.uri().path()) {
        (&Method::GET, "/v1/me") => {
            let plan = tenant.plan();
            let body = json!({
                "tenant": tenant.id(),
                "status": tenant.status(),
                "plan": plan.name,
                "features": plan.features,
                "rates": plan.rates,
                "concurrency": plan.concurrency,
            });
            let mut response = Response::new(full(body.to_string()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            response
        }
        (&Method::GET, "/v1/stream") => {
            let (mut chunks, mut interval_ms) = (10u64, 100u64);
            for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
                match &*k {
                    "chunks" => chunks = v.parse().unwrap_or(chunks),
                    "interval_ms" => interval_ms = v.parse().unwrap_or(interval_ms),
                    _ => {}
                }
            }
            let interval =
                tokio::time::interval(Duration::from_millis(interval_ms.clamp(1, 10_000)));
            let id = tenant.id().clone();
            let mut i = 0u64;
            let ticks = IntervalStream::new(interval).map(move |_| {
                i += 1;
                Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{id} tick {i}\n"))))
            });
            let body = if chunks == 0 {
                StreamBody::new(ticks).boxed_unsync()
            } else {
                let n = usize::try_from(chunks).unwrap_or(usize::MAX);
                StreamBody::new(ticks.take(n)).boxed_unsync()
            };
            Response::new(body)
        }
        (&Method::POST, "/v1/patterns") => {
            if tenant.plan().has_feature("custom_patterns") {
                text(StatusCode::CREATED, "pattern created")
            } else {
                // The crate's rendering (problem+json), from a handler.
                Rejection::new(RejectionKind::FeatureNotInPlan)
                    .tenant(tenant.id().clone())
                    .plan(&tenant.plan().name)
                    .feature("custom_patterns")
                    .to_response(false)
                    .map(full)
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    };
    Ok(response)
}

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).boxed_unsync()
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
}
