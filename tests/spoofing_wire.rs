//! Spoofing over the wire (issue 17): the claims of `tests/spoofing.rs`,
//! written as a client writes them on a socket — duplicate headers,
//! absolute-form request targets against `Host`, odd whitespace, duplicate
//! `Host`, header/path/query/host mixes — to a plain hyper server over TCP,
//! and as gRPC metadata through tonic.
//!
//! The stack is an auth stand-in whose principal may act for `acme` and
//! `initech` (not `globex`), a `TenancyLayer` bound to it (header →
//! path after `tenants` → query `tenant` → host under `example.com`), an
//! `AdmissionLayer` with a rate rule, and a handler counting the tenants it
//! runs for. Every row asserts the status, the problem `code`, whether the
//! handler ran and for whom, and that only the resolved tenant's counter
//! moved in the store (read with a cost-0 peek).

#![cfg(feature = "tonic")]

#[path = "common/path_reference.rs"]
mod path_reference;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::{service_fn, ServiceBuilder};
use tower_tenancy::resolve::{
    HeaderResolver, HostResolver, PathResolver, QueryResolver, ResolverChain,
};
use tower_tenancy::store::{Algorithm, Check, CounterStore, ManualClock, MemoryStore};
use tower_tenancy::{
    AdmissionLayer, AllowedTenants, Catalog, CurrentTenant, MemoryDirectory, Rule, TenancyLayer,
    TenantIdRules,
};

const CATALOG: &str = r#"
[[plans]]
name = "p"
rates = { calls = { limit = 1000, window = "1m", algorithm = "sliding_log" } }
[[tenants]]
id = "acme"
plan = "p"
[[tenants]]
id = "initech"
plan = "p"
[[tenants]]
id = "globex"
plan = "p"
"#;

const TENANTS: [&str; 3] = ["acme", "initech", "globex"];

/// Tenants the handler ran for, and how often.
type Seen = Arc<Mutex<BTreeMap<String, u64>>>;

fn chain() -> ResolverChain {
    ResolverChain::new()
        .or(HeaderResolver::new("x-tenant-id"))
        .or(PathResolver::after("tenants"))
        .or(QueryResolver::new("tenant"))
        .or(HostResolver::subdomain_of("example.com"))
}

fn principal() -> AllowedTenants {
    AllowedTenants::only(["acme".parse().unwrap(), "initech".parse().unwrap()])
}

fn directory() -> MemoryDirectory {
    MemoryDirectory::from_catalog(&Catalog::from_toml_str(CATALOG).unwrap())
}

/// The `calls` level of each tenant.
async fn levels(store: &MemoryStore) -> BTreeMap<&'static str, u64> {
    let check = Check::new(
        "calls",
        Algorithm::SlidingLog {
            window: Duration::from_secs(60),
        },
        1000,
        0,
    );
    let mut out = BTreeMap::new();
    for t in TENANTS {
        let d = store
            .peek(&t.parse().unwrap(), std::slice::from_ref(&check))
            .await
            .unwrap();
        out.insert(t, d[0].used);
    }
    out
}

/// What a row must produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// 200, the handler ran for this tenant, only its counter moved.
    Ran(&'static str),
    /// A problem+json refusal with this status and code; nothing ran or moved.
    Refused(u16, &'static str),
    /// hyper itself refuses the bytes (400 without a problem body); nothing
    /// reached the stack.
    Unparsable,
}

use Expect::{Ran, Refused, Unparsable};

const NOT_PERMITTED: Expect = Refused(403, "tenant_not_permitted");
const MALFORMED: Expect = Refused(400, "malformed_tenant_id");
const REQUIRED: Expect = Refused(400, "tenant_required");

/// The HTTP rows: (what, raw request line and header lines, expectation).
/// `Host: localhost` is added when a row has no `host` line.
fn http_rows() -> Vec<(&'static str, Vec<u8>, Expect)> {
    let rows: Vec<(&str, &[u8], Expect)> = vec![
        // The principal's two tenants, from each source.
        ("header acme", b"GET / HTTP/1.1\r\nx-tenant-id: acme", Ran("acme")),
        ("header initech", b"GET / HTTP/1.1\r\nx-tenant-id: initech", Ran("initech")),
        ("path initech", b"GET /tenants/initech/jobs HTTP/1.1", Ran("initech")),
        ("query acme", b"GET /jobs?tenant=acme HTTP/1.1", Ran("acme")),
        ("host initech", b"GET / HTTP/1.1\r\nhost: initech.example.com", Ran("initech")),
        ("host in capitals, port, trailing dot", b"GET / HTTP/1.1\r\nhost: INITECH.Example.COM.:8443", Ran("initech")),
        ("HTTP/1.0 without Host", b"GET / HTTP/1.0\r\nx-tenant-id: acme", Ran("acme")),
        // globex, plainly.
        ("header globex", b"GET / HTTP/1.1\r\nx-tenant-id: globex", NOT_PERMITTED),
        ("header name in capitals", b"GET / HTTP/1.1\r\nX-TENANT-ID: globex", NOT_PERMITTED),
        ("path globex", b"GET /tenants/globex HTTP/1.1", NOT_PERMITTED),
        ("path %67lobex", b"GET /tenants/%67lobex HTTP/1.1", NOT_PERMITTED),
        ("query globex", b"GET /?tenant=globex HTTP/1.1", NOT_PERMITTED),
        ("query key %74enant", b"GET /?%74enant=globex HTTP/1.1", NOT_PERMITTED),
        ("host globex", b"GET / HTTP/1.1\r\nhost: globex.example.com", NOT_PERMITTED),
        // Absolute-form request targets against Host.
        ("absolute globex, Host globex", b"GET http://globex.example.com/ HTTP/1.1\r\nhost: globex.example.com", NOT_PERMITTED),
        ("absolute acme, Host acme", b"GET http://acme.example.com/ HTTP/1.1\r\nhost: acme.example.com", Ran("acme")),
        ("absolute globex, Host acme", b"GET http://globex.example.com/ HTTP/1.1\r\nhost: acme.example.com", NOT_PERMITTED),
        ("absolute acme, Host globex", b"GET http://acme.example.com/ HTTP/1.1\r\nhost: globex.example.com", Ran("acme")),
        ("absolute globex with userinfo acme", b"GET http://acme@globex.example.com/ HTTP/1.1\r\nhost: globex.example.com", NOT_PERMITTED),
        ("absolute path globex, header acme", b"GET http://h.test/tenants/globex HTTP/1.1\r\nhost: h.test\r\nx-tenant-id: acme", NOT_PERMITTED),
        ("authority-form CONNECT globex", b"CONNECT globex.example.com:443 HTTP/1.1\r\nhost: globex.example.com:443", NOT_PERMITTED),
        ("asterisk-form, header globex", b"OPTIONS * HTTP/1.1\r\nx-tenant-id: globex", NOT_PERMITTED),
        // Duplicates.
        ("header acme twice", b"GET / HTTP/1.1\r\nx-tenant-id: acme\r\nx-tenant-id: acme", MALFORMED),
        ("header acme then globex", b"GET / HTTP/1.1\r\nx-tenant-id: acme\r\nx-tenant-id: globex", MALFORMED),
        ("header acme then Initech-cased name", b"GET / HTTP/1.1\r\nx-tenant-id: acme\r\nX-Tenant-Id: initech", MALFORMED),
        ("header comma list", b"GET / HTTP/1.1\r\nx-tenant-id: acme, initech", MALFORMED),
        ("host acme then globex", b"GET / HTTP/1.1\r\nhost: acme.example.com\r\nhost: globex.example.com", MALFORMED),
        ("host globex then acme", b"GET / HTTP/1.1\r\nhost: globex.example.com\r\nhost: acme.example.com", MALFORMED),
        ("query acme then globex", b"GET /?tenant=acme&tenant=globex HTTP/1.1", MALFORMED),
        // Whitespace: the parser strips the spaces and tabs around a value
        // (what no in-process row can show), not those inside.
        ("header spaces around globex", b"GET / HTTP/1.1\r\nx-tenant-id:    globex   ", NOT_PERMITTED),
        ("header tabs around acme", b"GET / HTTP/1.1\r\nx-tenant-id:\tacme\t", Ran("acme")),
        ("header no space after colon", b"GET / HTTP/1.1\r\nx-tenant-id:initech", Ran("initech")),
        ("header space inside", b"GET / HTTP/1.1\r\nx-tenant-id: ac me", MALFORMED),
        ("header space before the colon", b"GET / HTTP/1.1\r\nx-tenant-id : globex", Unparsable),
        ("header folded onto a second line", b"GET / HTTP/1.1\r\nx-tenant-id: acme\r\n globex", Unparsable),
        ("header control byte", b"GET / HTTP/1.1\r\nx-tenant-id: glo\x01bex", Unparsable),
        ("header latin-1 byte", b"GET / HTTP/1.1\r\nx-tenant-id: globex\xa0", MALFORMED),
        ("query + for space", b"GET /?tenant=+globex HTTP/1.1", MALFORMED),
        ("host with a space", b"GET / HTTP/1.1\r\nhost: globex .example.com", MALFORMED),
        // Paths.
        ("path dot-dot not normalized", b"GET /tenants/../tenants/globex HTTP/1.1", MALFORMED),
        ("path encoded slash", b"GET /tenants/acme%2F..%2Fglobex HTTP/1.1", MALFORMED),
        ("path double slash", b"GET //tenants/globex HTTP/1.1", NOT_PERMITTED),
        ("path literal in capitals", b"GET /Tenants/globex HTTP/1.1", REQUIRED),
        // Mixes: every tenant named must be permitted.
        ("header acme, path globex", b"GET /tenants/globex HTTP/1.1\r\nx-tenant-id: acme", NOT_PERMITTED),
        ("header acme, query globex", b"GET /?tenant=globex HTTP/1.1\r\nx-tenant-id: acme", NOT_PERMITTED),
        ("header acme, host globex", b"GET / HTTP/1.1\r\nx-tenant-id: acme\r\nhost: globex.example.com", NOT_PERMITTED),
        ("query acme, host globex", b"GET /?tenant=acme HTTP/1.1\r\nhost: globex.example.com", NOT_PERMITTED),
        ("header initech, query acme (both permitted)", b"GET /?tenant=acme HTTP/1.1\r\nx-tenant-id: initech", Ran("initech")),
        ("path acme, host initech (both permitted)", b"GET /tenants/acme HTTP/1.1\r\nhost: initech.example.com", Ran("acme")),
        ("every source initech", b"GET /tenants/initech?tenant=initech HTTP/1.1\r\nhost: initech.example.com\r\nx-tenant-id: initech", Ran("initech")),
        ("no claim", b"GET / HTTP/1.1", REQUIRED),
    ];
    rows.into_iter()
        .map(|(what, head, expect)| {
            let mut bytes = head.to_vec();
            let lower = String::from_utf8_lossy(head).to_ascii_lowercase();
            if !lower.contains("\r\nhost:") && !lower.contains("http/1.0") {
                bytes.extend_from_slice(b"\r\nhost: localhost");
            }
            bytes.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
            (what, bytes, expect)
        })
        .collect()
}

/// The stack, with the handler counting its tenants in `seen`.
fn stack(
    store: Arc<MemoryStore>,
    seen: Seen,
) -> impl tower::Service<
    Request<hyper::body::Incoming>,
    Response = Response<
        impl http_body::Body<
                Data = Bytes,
                Error = impl Into<Box<dyn std::error::Error + Send + Sync>>,
            > + Send
            + 'static,
    >,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
       + Send
       + 'static {
    ServiceBuilder::new()
        .map_request(|mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(principal());
            req
        })
        .layer(TenancyLayer::new(chain(), directory()).bind_to_principal())
        .layer(AdmissionLayer::new(store).rule(Rule::rate("calls")))
        .service(service_fn(move |req: Request<hyper::body::Incoming>| {
            let seen = seen.clone();
            async move {
                let tenant = req
                    .extensions()
                    .get::<CurrentTenant>()
                    .map(|t| t.id().to_string())
                    .unwrap_or_else(|| "(none)".to_owned());
                *seen.lock().unwrap().entry(tenant.clone()).or_default() += 1;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(tenant))))
            }
        }))
}

/// Writes `bytes` on a new connection and reads the answer: (status, body).
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    // The server may close before reading everything (a refused head).
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_over_a_socket_reach_only_the_principals_tenants() {
    let store = Arc::new(MemoryStore::with_clock(Arc::new(ManualClock::new(
        1_796_292_030_000,
    ))));
    let seen = Seen::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = stack(store.clone(), seen.clone());
    let server = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });

    let rows = http_rows();
    let mut failures = Vec::new();
    for (what, bytes, expect) in &rows {
        let seen_before = seen.lock().unwrap().clone();
        let levels_before = levels(&store).await;
        let (status, body) = raw(addr, bytes).await;
        let levels_after = levels(&store).await;
        let seen_after = seen.lock().unwrap().clone();
        let ran: Vec<String> = seen_after
            .iter()
            .filter(|(t, n)| seen_before.get(*t) != Some(n))
            .map(|(t, _)| t.clone())
            .collect();
        let moved: Vec<&str> = TENANTS
            .iter()
            .copied()
            .filter(|t| levels_before[t] != levels_after[t])
            .collect();
        let code = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|j| j["code"].as_str().map(str::to_owned));
        let got = match (status, &code) {
            (200, None) => Ran(TENANTS
                .into_iter()
                .find(|t| body == *t)
                .unwrap_or("(other)")),
            (s, Some(c)) => Refused(
                s,
                [
                    "tenant_not_permitted",
                    "malformed_tenant_id",
                    "tenant_required",
                ]
                .into_iter()
                .find(|k| k == c)
                .unwrap_or("(other code)"),
            ),
            (400, None) => Unparsable,
            _ => Refused(status, "(no code)"),
        };
        // What ran and what moved must agree with the answer.
        let consistent = match got {
            Ran(t) => ran == [t] && moved == [t],
            _ => ran.is_empty() && moved.is_empty(),
        };
        if got != *expect || !consistent {
            failures.push(format!(
                "{what}: expected {expect:?}, got {got:?} (status {status}, code {code:?}); \
                 handler ran for {ran:?}; counters moved for {moved:?}; request {:?}",
                String::from_utf8_lossy(bytes)
            ));
        }
    }
    server.abort();
    // No request ever ran for globex, whatever the row.
    assert_eq!(seen.lock().unwrap().get("globex"), None);
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// gRPC: the tenant in request metadata, over HTTP/2 through tonic.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_metadata_claims_reach_only_the_principals_tenants() {
    let store = Arc::new(MemoryStore::with_clock(Arc::new(ManualClock::new(
        1_796_292_030_000,
    ))));
    let seen = Seen::default();
    let counted = seen.clone();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let router = Server::builder()
        .layer(
            ServiceBuilder::new()
                .map_request(|mut req: Request<tonic::body::Body>| {
                    req.extensions_mut().insert(principal());
                    req
                })
                .layer(TenancyLayer::new(chain(), directory()).bind_to_principal())
                .layer(AdmissionLayer::new(store.clone()).rule(Rule::rate("calls")))
                .map_request(move |req: Request<tonic::body::Body>| {
                    let tenant = req
                        .extensions()
                        .get::<CurrentTenant>()
                        .map(|t| t.id().to_string())
                        .unwrap_or_else(|| "(none)".to_owned());
                    *counted.lock().unwrap().entry(tenant).or_default() += 1;
                    req
                }),
        )
        .add_service(health);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        router
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);

    // (what, metadata values of x-tenant-id in order, expected code or tenant)
    let rows: Vec<(&str, Vec<&str>, Result<&str, Code>)> = vec![
        ("acme", vec!["acme"], Ok("acme")),
        ("initech", vec!["initech"], Ok("initech")),
        ("globex", vec!["globex"], Err(Code::PermissionDenied)),
        ("GLOBEX", vec!["GLOBEX"], Err(Code::PermissionDenied)),
        (
            "acme then globex",
            vec!["acme", "globex"],
            Err(Code::InvalidArgument),
        ),
        (
            "acme twice",
            vec!["acme", "acme"],
            Err(Code::InvalidArgument),
        ),
        (
            "comma list",
            vec!["acme,initech"],
            Err(Code::InvalidArgument),
        ),
        // HTTP/2 carries the value as given: the spaces stay, and refuse.
        ("trailing space", vec!["acme "], Err(Code::InvalidArgument)),
        ("leading space", vec![" globex"], Err(Code::InvalidArgument)),
        ("encoded", vec!["%67lobex"], Err(Code::InvalidArgument)),
        ("none", vec![], Err(Code::InvalidArgument)),
    ];
    let mut failures = Vec::new();
    for (what, values, expect) in &rows {
        let mut req = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        for v in values {
            req.metadata_mut().append("x-tenant-id", v.parse().unwrap());
        }
        let seen_before = seen.lock().unwrap().clone();
        let levels_before = levels(&store).await;
        let answer = client.check(req).await;
        let levels_after = levels(&store).await;
        let seen_after = seen.lock().unwrap().clone();
        let ran: Vec<String> = seen_after
            .iter()
            .filter(|(t, n)| seen_before.get(*t) != Some(n))
            .map(|(t, _)| t.clone())
            .collect();
        let moved: Vec<&str> = TENANTS
            .iter()
            .copied()
            .filter(|t| levels_before[t] != levels_after[t])
            .collect();
        let ok = match (expect, &answer) {
            (Ok(t), Ok(_)) => ran == [*t] && moved == [*t],
            (Err(code), Err(status)) => {
                status.code() == *code && ran.is_empty() && moved.is_empty()
            }
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "{what}: expected {expect:?}, got {:?}; ran for {ran:?}; moved {moved:?}",
                answer
                    .map(|_| "OK")
                    .map_err(|s| (s.code(), s.message().to_owned()))
            ));
        }
    }
    server.abort();
    assert_eq!(seen.lock().unwrap().get("globex"), None);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The path rows' answers agree with the reference model the fuzz target
/// uses (`tests/common/path_reference.rs`).
#[test]
fn path_rows_agree_with_the_reference() {
    let rules = TenantIdRules::default();
    let after = path_reference::Segment::After("tenants");
    for (path, want) in [
        ("/tenants/initech/jobs", Ok(Some("initech"))),
        ("/tenants/%67lobex", Ok(Some("globex"))),
        ("/tenants/../tenants/globex", Err(())),
        ("/tenants/acme%2F..%2Fglobex", Err(())),
        ("//tenants/globex", Ok(Some("globex"))),
        ("/Tenants/globex", Ok(None)),
    ] {
        let got = path_reference::expected(path, after, &rules);
        assert_eq!(got, want.map(|o| o.map(str::to_owned)), "{path}");
    }
}
