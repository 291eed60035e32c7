//! Spoofing over real HTTP with real API keys: a client holding a valid key
//! of `acme` claims `globex` through every mix of header, path, query and
//! host (plain, upper case, percent-encoded, absolute-form URI), sent as raw
//! bytes over TCP. The stack is the PostgreSQL demo's: its API-key
//! middleware, then a `TenancyLayer` (header → path after `tenants` → query
//! `tenant` → host under example.com → the key's tenant) with
//! `bind_to_principal`, which checks the claims of all four sources, not
//! only the first hit.
//!
//! Every row that names `globex` anywhere must be 403
//! `tenant_not_permitted` (400 for ambiguous input) and never reach the
//! handler; every row that names only `acme`, or nothing, reaches the
//! handler as `acme`.
#![cfg(feature = "postgres")]

#[path = "../examples/axum_server.rs"]
#[allow(dead_code)]
mod example;
#[path = "common/http.rs"]
mod http_util;
#[path = "common/postgres_server.rs"]
mod postgres_server;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use example::postgres as pg_demo;
use postgres_server::{create_app_role, PgServer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_tenancy::resolve::{
    ExtensionResolver, HeaderResolver, HostResolver, PathResolver, QueryResolver, Resolver,
    ResolverChain,
};
use tower_tenancy::{Catalog, CurrentTenant, TenancyLayer};

const PLANS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/plans.toml");

type Seen = Arc<Mutex<Vec<String>>>;

fn claims() -> Vec<Box<dyn Resolver>> {
    vec![
        Box::new(HeaderResolver::new("x-tenant-id")),
        Box::new(PathResolver::after("tenants")),
        Box::new(QueryResolver::new("tenant")),
        Box::new(HostResolver::subdomain_of("example.com")),
    ]
}

fn stack(pg: &pg_demo::Pg, seen: Seen) -> Router {
    let mut chain = ResolverChain::new();
    for claim in claims() {
        chain = chain.or(claim);
    }
    let chain = chain.or(ExtensionResolver::new(|p: &pg_demo::ApiKeyPrincipal| {
        Some(p.tenant.clone())
    }));
    Router::new()
        .fallback(move |tenant: CurrentTenant| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(tenant.id().to_string());
                format!("handled {}", tenant.id())
            }
        })
        .layer(TenancyLayer::new(chain, pg.directory.clone()).bind_to_principal())
        .layer(axum::middleware::from_fn_with_state(
            pg.keys.clone(),
            pg_demo::authenticate,
        ))
}

/// Sends `head` (request line and headers, without the final blank line)
/// over a new TCP connection; `(status, problem code or body)`.
async fn raw(addr: std::net::SocketAddr, head: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{head}\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("response within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let code = match (body.find('{'), body.rfind('}')) {
        (Some(i), Some(j)) if i < j => serde_json::from_str::<Value>(&body[i..=j])
            .ok()
            .and_then(|v| v["code"].as_str().map(str::to_owned))
            .unwrap_or_default(),
        _ => body.trim().to_owned(),
    };
    (status, code)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Claim {
    None,
    Acme,
    Globex,
    /// Another spelling of globex (upper case, percent-encoded, trailing dot).
    GlobexAlt,
}

const CLAIMS: [Claim; 4] = [Claim::None, Claim::Acme, Claim::Globex, Claim::GlobexAlt];

fn request(key: &str, h: Claim, p: Claim, q: Claim, host: Claim) -> String {
    let path = match p {
        Claim::None => "/things".to_owned(),
        Claim::Acme => "/tenants/acme/things".to_owned(),
        Claim::Globex => "/tenants/globex/things".to_owned(),
        Claim::GlobexAlt => "/tenants/%67lobex/things".to_owned(),
    };
    let query = match q {
        Claim::None => "",
        Claim::Acme => "?tenant=acme",
        Claim::Globex => "?tenant=globex",
        Claim::GlobexAlt => "?tenant=%67%6Cobex",
    };
    let host = match host {
        Claim::None => "localhost",
        Claim::Acme => "acme.example.com",
        Claim::Globex => "globex.example.com",
        Claim::GlobexAlt => "GLOBEX.Example.COM.",
    };
    let mut head =
        format!("GET {path}{query} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {key}");
    match h {
        Claim::None => {}
        Claim::Acme => head.push_str("\r\nx-tenant-id: acme"),
        Claim::Globex => head.push_str("\r\nx-tenant-id: globex"),
        Claim::GlobexAlt => head.push_str("\r\nx-tenant-id: GLOBEX"),
    }
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_acme_never_acts_for_globex() {
    let pg = PgServer::new();
    create_app_role(&pg, "tt_app").await;
    let conn = pg_demo::connect(&pg.url("tt_app")).await.unwrap();
    pg_demo::seed(&conn.pool, &Catalog::from_path(PLANS).unwrap(), false)
        .await
        .unwrap();
    let tenant = |t: &str| t.parse().unwrap();
    let (_, acme) = pg_demo::ApiKeys::create(&conn.pool, &tenant("acme"), "spoof test")
        .await
        .unwrap();
    let (globex_id, globex) = pg_demo::ApiKeys::create(&conn.pool, &tenant("globex"), "")
        .await
        .unwrap();
    let seen: Seen = Arc::default();
    let server = http_util::TestServer::start(stack(&conn, seen.clone())).await;
    let addr = server.addr;

    let (mut refused, mut passed) = (0, 0);
    for h in CLAIMS {
        for p in CLAIMS {
            for q in CLAIMS {
                for host in CLAIMS {
                    let head = request(&acme, h, p, q, host);
                    let before = seen.lock().unwrap().len();
                    let (status, code) = raw(addr, &head).await;
                    let after = seen.lock().unwrap().clone();
                    let names_globex = [h, p, q, host]
                        .iter()
                        .any(|c| matches!(c, Claim::Globex | Claim::GlobexAlt));
                    if names_globex {
                        assert_eq!(
                            (status, code.as_str()),
                            (403, "tenant_not_permitted"),
                            "{head:?}"
                        );
                        assert_eq!(after.len(), before, "handler reached: {head:?}");
                        refused += 1;
                    } else {
                        assert_eq!(status, 200, "{head:?}: {code}");
                        assert_eq!(after.len(), before + 1);
                        assert_eq!(after.last().map(String::as_str), Some("acme"));
                        passed += 1;
                    }
                }
            }
        }
    }
    // 4 sources × 4 claims; 2^4 rows name only acme or nothing.
    assert_eq!((refused, passed), (256 - 16, 16));

    // Ambiguous or out-of-band claims: refused before the handler.
    let hostile: &[(String, u16, &str)] = &[
        // Absolute-form URI: its authority wins over the Host header.
        (
            format!("GET http://globex.example.com/things HTTP/1.1\r\nhost: acme.example.com\r\nauthorization: Bearer {acme}"),
            403,
            "tenant_not_permitted",
        ),
        (
            format!("GET /things HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {acme}\r\nx-tenant-id: acme\r\nx-tenant-id: globex"),
            400,
            "malformed_tenant_id",
        ),
        (
            format!("GET /things?tenant=acme&tenant=globex HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {acme}"),
            400,
            "malformed_tenant_id",
        ),
        (
            format!("GET /tenants/acme/things?tenant=..%2fglobex HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {acme}"),
            403,
            "tenant_not_permitted",
        ),
        // The other tenant's key id with acme's secret.
        (
            format!(
                "GET /things HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer ttk_{globex_id}_{}",
                &acme[acme.len() - 64..]
            ),
            401,
            "unauthenticated",
        ),
        (
            "GET /tenants/globex/things HTTP/1.1\r\nhost: localhost".to_owned(),
            401,
            "unauthenticated",
        ),
        (
            format!("GET /things HTTP/1.1\r\nhost: localhost\r\nauthorization: bearer {acme}"),
            401,
            "unauthenticated",
        ),
    ];
    for (head, status, code) in hostile {
        let before = seen.lock().unwrap().len();
        assert_eq!(
            raw(addr, head).await,
            (*status, code.to_string()),
            "{head:?}"
        );
        assert_eq!(
            seen.lock().unwrap().len(),
            before,
            "handler reached: {head:?}"
        );
    }
    // Globex's own key does act for globex: the refusals above are about the key.
    let head = format!(
        "GET /tenants/globex/things HTTP/1.1\r\nhost: globex.example.com\r\nauthorization: Bearer {globex}"
    );
    assert_eq!(raw(addr, &head).await, (200, "handled globex".into()));
    println!("FIGURES spoofing: {refused} rows refused with 403, {passed} served as acme, {} hostile rows refused", hostile.len());
}
