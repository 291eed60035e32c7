//! `bind_to_principal` checks every tenant a request names, not only the
//! chain's first hit: an axum app on a free port, raw requests over TCP (so
//! that duplicate and conflicting claims travel as a client sends them).

#[path = "common/http.rs"]
mod http_util;

use std::sync::{Arc, Mutex};

use axum::Router;
use http_util::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_tenancy::resolve::{
    DefaultResolver, HeaderResolver, HostResolver, PathResolver, QueryResolver, ResolverChain,
};
use tower_tenancy::{AllowedTenants, Catalog, CurrentTenant, MemoryDirectory, TenancyLayer};

const CATALOG: &str = r#"
[[plans]]
name = "free"
[[tenants]]
id = "acme"
plan = "free"
[[tenants]]
id = "globex"
plan = "free"
[[tenants]]
id = "initech"
plan = "free"
[[tenants]]
id = "public"
plan = "free"
"#;

/// The handler records the tenant it ran for.
type Seen = Arc<Mutex<Vec<String>>>;

/// Header → path after `tenants` → query `tenant` → host under example.com
/// → default `public`; `authorization: Bearer <a,b>` allows tenants a and b
/// (`*` any), no header no principal.
fn app(seen: Seen) -> Router {
    let directory = MemoryDirectory::from_catalog(&Catalog::from_toml_str(CATALOG).unwrap());
    let chain = ResolverChain::new()
        .or(HeaderResolver::new("x-tenant-id"))
        .or(PathResolver::after("tenants"))
        .or(QueryResolver::new("tenant"))
        .or(HostResolver::subdomain_of("example.com"))
        .or(DefaultResolver::new("public".parse().unwrap()));
    let auth = axum::middleware::from_fn(
        |mut req: axum::extract::Request, next: axum::middleware::Next| async move {
            let allowed = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|ids| match ids {
                    "*" => AllowedTenants::Any,
                    ids => AllowedTenants::only(ids.split(',').map(|id| id.parse().unwrap())),
                });
            if let Some(allowed) = allowed {
                req.extensions_mut().insert(allowed);
            }
            next.run(req).await
        },
    );
    Router::new()
        .fallback(move |tenant: CurrentTenant| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(tenant.id().to_string());
                format!("handled {}", tenant.id())
            }
        })
        .layer(TenancyLayer::new(chain, directory).bind_to_principal())
        .layer(auth)
}

/// Sends a raw request head over a new connection; (status, body).
async fn raw(addr: &str, head: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{head}\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

#[tokio::test]
async fn every_claim_must_be_permitted() {
    let seen = Seen::default();
    let server = TestServer::start(app(seen.clone())).await;
    let url = server.url("");
    let addr = url.trim_start_matches("http://");
    // (request line + headers, expected status, tenant the handler saw or problem code)
    let cases: &[(&str, u16, &str)] = &[
        // One claim, permitted or not.
        ("GET / HTTP/1.1\r\nhost: x\r\nauthorization: Bearer acme\r\nx-tenant-id: acme", 200, "acme"),
        ("GET / HTTP/1.1\r\nhost: x\r\nauthorization: Bearer acme\r\nx-tenant-id: globex", 403, "tenant_not_permitted"),
        // The header wins the chain, but a lower source names another tenant.
        ("GET /?tenant=globex HTTP/1.1\r\nhost: x\r\nauthorization: Bearer acme\r\nx-tenant-id: acme", 403, "tenant_not_permitted"),
        ("GET /tenants/globex/x HTTP/1.1\r\nhost: x\r\nauthorization: Bearer acme\r\nx-tenant-id: acme", 403, "tenant_not_permitted"),
        ("GET /?tenant=acme HTTP/1.1\r\nhost: globex.example.com\r\nauthorization: Bearer acme", 403, "tenant_not_permitted"),
        ("GET http://globex.example.com/?tenant=acme HTTP/1.1\r\nhost: globex.example.com\r\nauthorization: Bearer acme", 403, "tenant_not_permitted"),
        // A malformed claim of lower priority is refused too.
        ("GET /?tenant=.. HTTP/1.1\r\nhost: x\r\nauthorization: Bearer acme\r\nx-tenant-id: acme", 403, "tenant_not_permitted"),
        // Every claim the same permitted tenant.
        ("GET /tenants/acme/x?tenant=acme HTTP/1.1\r\nhost: acme.example.com\r\nauthorization: Bearer acme\r\nx-tenant-id: acme", 200, "acme"),
        // The default tenant is not a claim of the client, but it must be permitted when it wins.
        ("GET / HTTP/1.1\r\nhost: x\r\nauthorization: Bearer acme", 403, "tenant_not_permitted"),
        ("GET / HTTP/1.1\r\nhost: x\r\nauthorization: Bearer acme,public", 200, "public"),
        ("GET /?tenant=acme HTTP/1.1\r\nhost: x\r\nauthorization: Bearer acme", 200, "acme"),
        // A principal of two tenants: claims of both pass, the first source wins.
        ("GET /?tenant=globex HTTP/1.1\r\nhost: x\r\nauthorization: Bearer acme,globex\r\nx-tenant-id: acme", 200, "acme"),
        ("GET /?tenant=initech HTTP/1.1\r\nhost: x\r\nauthorization: Bearer acme,globex\r\nx-tenant-id: acme", 403, "tenant_not_permitted"),
        // Any tenant.
        ("GET /?tenant=globex HTTP/1.1\r\nhost: x\r\nauthorization: Bearer *\r\nx-tenant-id: acme", 200, "acme"),
        // No principal.
        ("GET / HTTP/1.1\r\nhost: x\r\nx-tenant-id: acme", 403, "tenant_not_permitted"),
    ];
    for &(head, status, expect) in cases {
        let before = seen.lock().unwrap().len();
        let (got, body) = raw(addr, head).await;
        assert_eq!(got, status, "{head:?}: {body}");
        let ran = seen.lock().unwrap()[before..].to_vec();
        if status == 200 {
            assert_eq!(body, format!("handled {expect}"), "{head:?}");
            assert_eq!(ran, [expect], "{head:?}");
        } else {
            let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(problem["code"], expect, "{head:?}");
            assert!(ran.is_empty(), "{head:?}: the handler ran for {ran:?}");
        }
    }
}
