//! The stack of `examples/hyper_server.rs` (plain hyper 1 + hyper-util, no
//! framework) served on a free port and called with a real hyper client:
//! the same statuses, bodies and header fields as the axum path, and
//! concurrency slots released when a streamed body ends, when the client
//! drops it, and when the client disconnects.
//!
//! The memory store runs on a `ManualClock` (time moves only when a test
//! moves it): the RateLimit fields and `Retry-After` are exact, and the
//! refused request passes at exactly now + `Retry-After`.

#[path = "../examples/hyper_server.rs"]
#[allow(dead_code)]
mod example;
#[path = "common/http.rs"]
mod http_util;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use http_util::{get, parse_policy, parse_ratelimit, Reply};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tower_tenancy::store::{ManualClock, MemoryStore};
use tower_tenancy::{Catalog, MemoryDirectory};

const CATALOG: &str = r#"
[[plans]]
name = "tiny"
features = []
rates = { api_calls_per_minute = { limit = 3, window = "1m" } }
concurrency = { concurrent_executions = { limit = 1 } }

[[plans]]
name = "pro"
features = ["custom_patterns"]
rates = { api_calls_per_minute = { limit = 1000, window = "1m" } }
concurrency = { concurrent_executions = { limit = 1 } }

[[tenants]]
id = "acme"
plan = "tiny"
[[tenants]]
id = "globex"
plan = "pro"
[[tenants]]
id = "umbrella"
plan = "pro"
status = "suspended"
"#;

/// 2026-12-03T10:00:30Z: 30 s into a minute.
const T0: u64 = 1_796_292_030_000;

/// The example's app and accept loop on 127.0.0.1:<free port>, its store
/// on a manual clock at `T0`.
struct Server {
    addr: SocketAddr,
    clock: Arc<ManualClock>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start() -> Self {
        let catalog = Catalog::from_toml_str(CATALOG).unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let app = example::app(
            MemoryDirectory::from_catalog(&catalog),
            Arc::new(MemoryStore::with_clock(clock.clone())),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(example::serve(listener, app));
        Self { addr, clock, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn assert_problem(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let body = r.json();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    // 429s take the registered quota-exceeded type (issue 13).
    let want = if status == 429 {
        "https://iana.org/assignments/http-problem-types#quota-exceeded".to_owned()
    } else {
        format!("urn:tower-tenancy:problem:{code}")
    };
    assert_eq!(body["type"], want.as_str());
}

/// GET `/v1/stream?chunks=1` until it is admitted (polled); panics after 10 s.
async fn until_admitted(client: &HttpClient, server: &Server, tenant: &str) -> Duration {
    let start = tokio::time::Instant::now();
    loop {
        let r = get(
            client,
            &server.url("/v1/stream?chunks=1&interval_ms=1"),
            &[("x-tenant-id", tenant)],
        )
        .await;
        if r.status == StatusCode::OK {
            return start.elapsed();
        }
        assert_problem(&r, 429, "concurrency_limited");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "concurrency slot not released within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn statuses_bodies_and_ratelimit_fields() {
    let server = Server::start().await;
    let client = http_util::client();

    // 200 with the tenant's plan and the RateLimit fields.
    let r = get(&client, &server.url("/v1/me"), &[("x-tenant-id", "globex")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["tenant"], "globex");
    assert_eq!(r.json()["plan"], "pro");
    let (name, q, w) = parse_policy(r.header("ratelimit-policy").unwrap());
    assert_eq!(
        (name.as_str(), q, w),
        ("api_calls_per_minute", 1000, Some(60))
    );
    let (name, remaining, reset) = parse_ratelimit(r.header("ratelimit").unwrap());
    assert_eq!((name.as_str(), remaining), ("api_calls_per_minute", 999));
    // A sub-bucket window holds a unit until its bucket (W/8) has left the
    // window: up to 67.5 s for 60 s.
    assert!((1..=68).contains(&reset), "t {reset}");
    // The query parameter works too.
    let r = get(&client, &server.url("/v1/me?tenant=globex"), &[]).await;
    assert_eq!(r.status, 200);
    let (_, remaining, _) = parse_ratelimit(r.header("ratelimit").unwrap());
    assert_eq!(remaining, 998);

    // 400 and 403, problem+json.
    let r = get(&client, &server.url("/v1/me"), &[]).await;
    assert_problem(&r, 400, "tenant_required");
    let r = get(&client, &server.url("/v1/me"), &[("x-tenant-id", "../etc")]).await;
    assert_problem(&r, 400, "malformed_tenant_id");
    assert!(!String::from_utf8_lossy(&r.body).contains("../etc"));
    let r = get(&client, &server.url("/v1/me"), &[("x-tenant-id", "nobody")]).await;
    assert_problem(&r, 403, "unknown_tenant");
    let r = get(
        &client,
        &server.url("/v1/me"),
        &[("x-tenant-id", "umbrella")],
    )
    .await;
    assert_problem(&r, 403, "tenant_inactive");
    assert_eq!(r.json()["status_of_tenant"], "suspended");

    // The feature checked in the handler, rendered by the crate.
    let post = |tenant: &str| {
        Request::post(server.url("/v1/patterns"))
            .header("x-tenant-id", tenant)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let r = http_util::send(&client, post("globex")).await;
    assert_eq!(r.status, 201);
    let r = http_util::send(&client, post("acme")).await;
    assert_problem(&r, 403, "feature_not_in_plan");
    assert_eq!(r.json()["feature"], "custom_patterns");
    assert_eq!(r.json()["plan"], "tiny");
}

#[tokio::test]
async fn rate_limit_429_with_retry_after() {
    let server = Server::start().await;
    let client = http_util::client();
    let acme = [("x-tenant-id", "acme")];
    for expected in [2, 1, 0] {
        let r = get(&client, &server.url("/v1/me"), &acme).await;
        assert_eq!(r.status, 200);
        let (_, remaining, _) = parse_ratelimit(r.header("ratelimit").unwrap());
        assert_eq!(remaining, expected);
    }
    let r = get(&client, &server.url("/v1/me"), &acme).await;
    assert_problem(&r, 429, "rate_limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    // The window is full: the wait lasts until the oldest bucket has left
    // it, up to W + W/8 = 67.5 s (store semantics).
    assert!((1..=68).contains(&retry), "retry-after {retry}");
    let body = r.json();
    assert_eq!(body["policy"], "api_calls_per_minute");
    assert_eq!(body["limit"], 3);
    assert_eq!(body["usage"], 3);
    assert_eq!(body["retry_after"], retry);
    let (name, q, _) = parse_policy(r.header("ratelimit-policy").unwrap());
    assert_eq!((name.as_str(), q), ("api_calls_per_minute", 3));
    let (_, remaining, _) = parse_ratelimit(r.header("ratelimit").unwrap());
    assert_eq!(remaining, 0);
    // Another tenant is not affected.
    let r = get(&client, &server.url("/v1/me"), &[("x-tenant-id", "globex")]).await;
    assert_eq!(r.status, 200);
    // The request passes at exactly now + Retry-After.
    server.clock.advance_ms(retry * 1000);
    let r = get(&client, &server.url("/v1/me"), &acme).await;
    assert_eq!(r.status, 200, "at now + Retry-After ({retry} s)");
}

#[tokio::test]
async fn slot_held_by_the_body_and_released_when_it_ends() {
    let server = Server::start().await;
    let client = http_util::client();
    let globex = [("x-tenant-id", "globex")];
    for _ in 0..2 {
        // Headers arrive; the body (3 chunks, 1.5 s apart) is still
        // streaming for 3 s: time for the two checks below, even on a busy
        // machine.
        let req = Request::get(server.url("/v1/stream?chunks=3&interval_ms=1500"))
            .header("x-tenant-id", "globex")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client.request(req).await.unwrap();
        assert_eq!(response.status(), 200);

        // Meanwhile the tenant's only slot is taken...
        let r = get(&client, &server.url("/v1/stream?chunks=1"), &globex).await;
        assert_problem(&r, 429, "concurrency_limited");
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.json()["policy"], "concurrent_executions");
        // ...but only for the route under the concurrency rule.
        let r = get(&client, &server.url("/v1/me"), &globex).await;
        assert_eq!(r.status, 200);

        // The body is read to its end: the slot is free at once.
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"globex tick 1\nglobex tick 2\nglobex tick 3\n");
        let r = get(&client, &server.url("/v1/stream?chunks=1"), &globex).await;
        assert_eq!(r.status, 200, "slot still held after the body ended");
        assert_eq!(&r.body[..], b"globex tick 1\n");
    }
}

#[tokio::test]
async fn slot_released_when_the_client_goes_away_mid_body() {
    let server = Server::start().await;
    let client = http_util::client();
    let endless = "/v1/stream?chunks=0&interval_ms=50";

    // 1. A hyper client reads one chunk of a body that never ends, then drops it.
    let req = Request::get(server.url(endless))
        .header("x-tenant-id", "globex")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut body = client.request(req).await.unwrap().into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"globex tick 1\n");
    assert_slot_taken(&client, &server).await;
    drop(body);
    until_admitted(&client, &server, "globex").await;

    // 2. A raw TCP client that closes its socket mid-body.
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    socket
        .write_all(
            format!("GET {endless} HTTP/1.1\r\nhost: test\r\nx-tenant-id: globex\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("tick 2") {
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "server closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 200 OK"));
    assert_slot_taken(&client, &server).await;
    drop(socket);
    until_admitted(&client, &server, "globex").await;

    // 3. HTTP/2: the client drops one stream, the connection stays up.
    let h2: HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = Request::get(server.url(endless))
        .header("x-tenant-id", "globex")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = h2.request(req).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    assert_slot_taken(&h2, &server).await;
    drop(body);
    until_admitted(&h2, &server, "globex").await;
}

/// The slot is taken: a second stream is refused.
async fn assert_slot_taken(client: &HttpClient, server: &Server) {
    let r = get(
        client,
        &server.url("/v1/stream?chunks=1"),
        &[("x-tenant-id", "globex")],
    )
    .await;
    assert_problem(&r, 429, "concurrency_limited");
}
