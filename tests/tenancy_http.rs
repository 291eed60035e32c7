//! TenancyLayer end to end: an axum app on a free port, a real HTTP client.

#[path = "common/http.rs"]
mod http_util;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use http::{Request, StatusCode};
use http_util::{get as http_get, TestServer};
use tower_tenancy::directory::{LookupResult, TenantDirectory};
use tower_tenancy::future::MaybeReady;
use tower_tenancy::resolve::{
    DefaultResolver, ExtensionResolver, HeaderResolver, PathResolver, QueryResolver, ResolverChain,
};
use tower_tenancy::{
    AllowedTenants, CachedDirectory, Catalog, CurrentTenant, MemoryDirectory, Overrides,
    TenancyLayer, TenantId, TenantStatus,
};

const CATALOG: &str = r#"
[[plans]]
name = "free"
features = ["basic"]
[[plans]]
name = "pro"
features = ["basic", "reports"]

[[tenants]]
id = "acme"
plan = "free"
[[tenants]]
id = "globex"
plan = "pro"
[[tenants]]
id = "umbrella"
plan = "free"
status = "suspended"
[[tenants]]
id = "hooli"
plan = "pro"
status = "expired"
[[tenants]]
id = "pied-piper"
plan = "free"
status = "deleted"
"#;

fn directory() -> (Catalog, MemoryDirectory) {
    let catalog = Catalog::from_toml_str(CATALOG).unwrap();
    let dir = MemoryDirectory::from_catalog(&catalog);
    (catalog, dir)
}

async fn whoami(tenant: CurrentTenant) -> String {
    let mut features: Vec<_> = tenant.plan().features.iter().cloned().collect();
    features.sort();
    format!(
        "{} {} {}",
        tenant.id(),
        tenant.plan().name,
        features.join(",")
    )
}

async fn maybe(tenant: Option<CurrentTenant>) -> String {
    tenant.map_or("anonymous".into(), |t| t.id().to_string())
}

fn chain() -> ResolverChain {
    ResolverChain::new()
        .or(HeaderResolver::new("x-tenant-id"))
        .or(PathResolver::after("tenants"))
        .or(QueryResolver::new("tenant"))
}

#[tokio::test]
async fn statuses_bodies_and_extensions_over_a_socket() {
    let (_, dir) = directory();
    let app = Router::new()
        .route("/whoami", get(whoami))
        .route("/tenants/{id}/whoami", get(whoami))
        .layer(TenancyLayer::new(chain(), dir));
    let server = TestServer::start(app).await;
    let client = http_util::client();

    // Happy path, from each source; the handler sees the tenant and its plan.
    let r = http_get(
        &client,
        &server.url("/whoami"),
        &[("x-tenant-id", "globex")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"globex pro basic,reports");
    let r = http_get(&client, &server.url("/tenants/acme/whoami"), &[]).await;
    assert_eq!(
        (r.status, &r.body[..]),
        (StatusCode::OK, &b"acme free basic"[..])
    );
    let r = http_get(&client, &server.url("/whoami?tenant=acme"), &[]).await;
    assert_eq!(r.status, 200);
    // Header outranks path.
    let r = http_get(
        &client,
        &server.url("/tenants/acme/whoami"),
        &[("x-tenant-id", "globex")],
    )
    .await;
    assert!(r.body.starts_with(b"globex "));

    // Each rejection: status, problem+json, code.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16, &'a str);
    let cases: &[Case] = &[
        ("/whoami", &[], 400, "tenant_required"),
        (
            "/whoami",
            &[("x-tenant-id", "../etc")],
            400,
            "malformed_tenant_id",
        ),
        (
            "/whoami",
            &[("x-tenant-id", "")],
            400,
            "malformed_tenant_id",
        ),
        ("/whoami?tenant=a%00b", &[], 400, "malformed_tenant_id"),
        (
            "/whoami",
            &[("x-tenant-id", "nobody")],
            403,
            "unknown_tenant",
        ),
        (
            "/whoami",
            &[("x-tenant-id", "umbrella")],
            403,
            "tenant_inactive",
        ),
        (
            "/whoami",
            &[("x-tenant-id", "hooli")],
            403,
            "tenant_inactive",
        ),
        (
            "/whoami",
            &[("x-tenant-id", "pied-piper")],
            403,
            "tenant_inactive",
        ),
    ];
    for (path, headers, status, code) in cases {
        let r = http_get(&client, &server.url(path), headers).await;
        assert_eq!(r.status.as_u16(), *status, "{path} {headers:?}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        let body = r.json();
        assert_eq!(body["code"], *code, "{body}");
        assert_eq!(body["status"], *status);
        assert!(body["type"].as_str().unwrap().ends_with(code));
        assert!(
            !body["detail"].as_str().unwrap().contains("../etc"),
            "input echoed: {body}"
        );
    }
    let r = http_get(
        &client,
        &server.url("/whoami"),
        &[("x-tenant-id", "umbrella")],
    )
    .await;
    assert_eq!(r.json()["status_of_tenant"], "suspended");
    assert_eq!(r.json()["tenant"], "umbrella");

    // Duplicated header: 400, not first-wins.
    let req = Request::get(server.url("/whoami"))
        .header("x-tenant-id", "acme")
        .header("x-tenant-id", "globex")
        .body(Default::default())
        .unwrap();
    let r = http_util::send(&client, req).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "malformed_tenant_id");

    // Non-UTF-8 header bytes.
    let req = Request::get(server.url("/whoami"))
        .header(
            "x-tenant-id",
            http::HeaderValue::from_bytes(b"ac\xffme").unwrap(),
        )
        .body(Default::default())
        .unwrap();
    assert_eq!(http_util::send(&client, req).await.status, 400);
}

#[tokio::test]
async fn grpc_requests_get_grpc_statuses() {
    let (_, dir) = directory();
    let app = Router::new()
        .route("/pkg.Svc/Call", axum::routing::post(|| async { "ok" }))
        .layer(TenancyLayer::new(HeaderResolver::new("x-tenant-id"), dir));
    let server = TestServer::start(app).await;
    let client = http_util::client();
    for (tenant, code) in [
        (None, "3"),
        (Some("nobody"), "7"),
        (Some("umbrella"), "7"),
        (Some("a b"), "3"),
    ] {
        let mut req = Request::post(server.url("/pkg.Svc/Call"))
            .header("content-type", "application/grpc+proto");
        if let Some(t) = tenant {
            req = req.header("x-tenant-id", t);
        }
        let r = http_util::send(&client, req.body(Default::default()).unwrap()).await;
        assert_eq!(r.status, 200, "gRPC errors travel as grpc-status");
        assert_eq!(r.header("grpc-status"), Some(code), "{tenant:?}");
        assert!(!r.header("grpc-message").unwrap_or("").is_empty());
        assert_eq!(r.header("content-type"), Some("application/grpc"));
    }
}

#[tokio::test]
async fn optional_tenant_and_404_for_unknown() {
    let (_, dir) = directory();
    let app = Router::new().route("/maybe", get(maybe)).layer(
        TenancyLayer::new(HeaderResolver::new("x-tenant-id"), dir)
            .optional()
            .unknown_tenant_status(StatusCode::NOT_FOUND),
    );
    let server = TestServer::start(app).await;
    let client = http_util::client();
    let r = http_get(&client, &server.url("/maybe"), &[]).await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"anonymous"[..]));
    let r = http_get(&client, &server.url("/maybe"), &[("x-tenant-id", "acme")]).await;
    assert_eq!(&r.body[..], b"acme");
    let r = http_get(&client, &server.url("/maybe"), &[("x-tenant-id", "nobody")]).await;
    assert_eq!(r.status, 404);
    // Optional does not mean "malformed falls through".
    let r = http_get(&client, &server.url("/maybe"), &[("x-tenant-id", "%%")]).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn hot_reload_takes_effect_on_the_next_request() {
    let (catalog, dir) = directory();
    let app = Router::new()
        .route("/whoami", get(whoami))
        .layer(TenancyLayer::new(
            HeaderResolver::new("x-tenant-id"),
            dir.clone(),
        ));
    let server = TestServer::start(app).await;
    let client = http_util::client();
    let acme = [("x-tenant-id", "acme")];
    let id: TenantId = "acme".parse().unwrap();

    assert_eq!(
        &http_get(&client, &server.url("/whoami"), &acme).await.body[..],
        b"acme free basic"
    );
    // Plan change.
    let pro = catalog.plan("pro").unwrap().clone();
    dir.update(&id, |t| t.set_plan(pro.clone())).unwrap();
    assert_eq!(
        &http_get(&client, &server.url("/whoami"), &acme).await.body[..],
        b"acme pro basic,reports"
    );
    // Override revoking a feature.
    dir.update(&id, |t| {
        t.set_overrides(Overrides::default().feature("reports", false))
    });
    assert_eq!(
        &http_get(&client, &server.url("/whoami"), &acme).await.body[..],
        b"acme pro basic"
    );
    // Suspension.
    dir.update(&id, |t| t.set_status(TenantStatus::Suspended));
    assert_eq!(
        http_get(&client, &server.url("/whoami"), &acme)
            .await
            .status,
        403
    );
    // Whole-catalog reload: back to the file's state.
    dir.replace_all(catalog.tenants().iter().cloned());
    assert_eq!(
        &http_get(&client, &server.url("/whoami"), &acme).await.body[..],
        b"acme free basic"
    );
    // Removal.
    dir.remove(&id);
    let r = http_get(&client, &server.url("/whoami"), &acme).await;
    assert_eq!(r.json()["code"], "unknown_tenant");
}

#[derive(Clone)]
struct Principal {
    tenants: AllowedTenants,
    home: Option<TenantId>,
}

#[tokio::test]
async fn tenant_bound_to_the_principal() {
    let (_, dir) = directory();
    // A stand-in for an authentication layer: the bearer token names the principal.
    let auth = axum::middleware::from_fn(
        |mut req: axum::extract::Request, next: axum::middleware::Next| async move {
            let principal = match req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
            {
                Some("Bearer acme-user") => Some(Principal {
                    tenants: AllowedTenants::only(["acme".parse().unwrap()]),
                    home: Some("acme".parse().unwrap()),
                }),
                Some("Bearer operator") => Some(Principal {
                    tenants: AllowedTenants::Any,
                    home: None,
                }),
                _ => None,
            };
            if let Some(p) = principal {
                req.extensions_mut().insert(p.tenants.clone());
                req.extensions_mut().insert(p);
            }
            next.run(req).await
        },
    );
    let resolver = ResolverChain::new()
        .or(HeaderResolver::new("x-tenant-id"))
        .or(ExtensionResolver::new(|p: &Principal| p.home.clone()));
    let app = Router::new()
        .route("/whoami", get(whoami))
        .layer(TenancyLayer::new(resolver, dir).bind_to_principal())
        .layer(auth);
    let server = TestServer::start(app).await;
    let client = http_util::client();
    type Case<'a> = (&'a [(&'a str, &'a str)], u16, &'a str);
    let cases: &[Case] = &[
        (&[("authorization", "Bearer acme-user")], 200, "acme"),
        (
            &[
                ("authorization", "Bearer acme-user"),
                ("x-tenant-id", "acme"),
            ],
            200,
            "acme",
        ),
        (
            &[
                ("authorization", "Bearer acme-user"),
                ("x-tenant-id", "globex"),
            ],
            403,
            "tenant_not_permitted",
        ),
        (
            &[
                ("authorization", "Bearer acme-user"),
                ("x-tenant-id", "ACME"),
            ],
            403,
            "tenant_not_permitted",
        ),
        (&[("x-tenant-id", "acme")], 403, "tenant_not_permitted"),
        (
            &[
                ("authorization", "Bearer operator"),
                ("x-tenant-id", "globex"),
            ],
            200,
            "globex",
        ),
        (
            &[("authorization", "Bearer operator")],
            400,
            "tenant_required",
        ),
    ];
    for (headers, status, expect) in cases {
        let r = http_get(&client, &server.url("/whoami"), headers).await;
        assert_eq!(r.status.as_u16(), *status, "{headers:?}");
        if *status == 200 {
            assert!(r.body.starts_with(expect.as_bytes()), "{headers:?}");
        } else {
            assert_eq!(r.json()["code"], *expect, "{headers:?}");
        }
    }
}

/// A "database" directory that counts its lookups and answers slowly.
struct SlowDirectory {
    inner: MemoryDirectory,
    hits: Arc<AtomicUsize>,
}

impl TenantDirectory for SlowDirectory {
    fn lookup(&self, id: &TenantId) -> MaybeReady<LookupResult> {
        self.hits.fetch_add(1, Ordering::SeqCst);
        let answer = self.inner.get(id);
        MaybeReady::boxed(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(answer)
        })
    }
}

#[tokio::test]
async fn cached_directory_bounds_backend_calls() {
    let (_, dir) = directory();
    let hits = Arc::new(AtomicUsize::new(0));
    let cached = CachedDirectory::new(SlowDirectory {
        inner: dir.clone(),
        hits: hits.clone(),
    })
    .ttl(Duration::from_secs(60))
    .negative_ttl(Duration::from_secs(60))
    .max_negative(100);
    let app = Router::new()
        .route("/whoami", get(whoami))
        .layer(TenancyLayer::new(
            HeaderResolver::new("x-tenant-id"),
            cached,
        ));
    let server = TestServer::start(app).await;
    let client = http_util::client();

    // 50 concurrent requests for one tenant share one backend call.
    let calls = (0..50).map(|_| {
        let client = client.clone();
        let url = server.url("/whoami");
        async move {
            http_get(&client, &url, &[("x-tenant-id", "acme")])
                .await
                .status
        }
    });
    for status in futures_join_all(calls).await {
        assert_eq!(status, 200);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // The same unknown id twice: one backend call (negative cache).
    for _ in 0..2 {
        let r = http_get(&client, &server.url("/whoami"), &[("x-tenant-id", "ghost")]).await;
        assert_eq!(r.status, 403);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    // A flood of random unknown ids: each reaches the backend once, and the
    // negative cache stays within its bound.
    let flood = |round: &'static str| {
        let (client, url, hits) = (client.clone(), server.url("/whoami"), hits.clone());
        async move {
            let before = hits.load(Ordering::SeqCst);
            for i in 0..300 {
                let id = format!("ghost-{i}");
                let r = http_get(&client, &url, &[("x-tenant-id", &id)]).await;
                assert_eq!(r.status, 403, "{round}");
            }
            hits.load(Ordering::SeqCst) - before
        }
    };
    assert_eq!(flood("first").await, 300);
    // Asked again, the 300 ids reach the backend again but for those the
    // negative cache kept: at most `max_negative` (100), plus what the
    // cache has not evicted yet (its maintenance runs in batches of up to
    // 64 writes). An unbounded cache would answer all 300.
    let again = flood("again").await;
    assert!(
        again >= 300 - 100 - 64,
        "only {again} of 300 reached the backend: more than 164 ids were kept"
    );
}

async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn default_resolver_as_last_resort() {
    let (_, dir) = directory();
    let app = Router::new()
        .route("/whoami", get(whoami))
        .layer(TenancyLayer::new(
            ResolverChain::new()
                .or(HeaderResolver::new("x-tenant-id"))
                .or(DefaultResolver::new("acme".parse().unwrap())),
            dir,
        ));
    let server = TestServer::start(app).await;
    let client = http_util::client();
    let r = http_get(&client, &server.url("/whoami"), &[]).await;
    assert!(r.body.starts_with(b"acme "));
    let r = http_get(
        &client,
        &server.url("/whoami"),
        &[("x-tenant-id", "globex")],
    )
    .await;
    assert!(r.body.starts_with(b"globex "));
}
