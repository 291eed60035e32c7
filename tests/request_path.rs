//! The allocation-free request path (issue 11) keeps every contract of the
//! owning one: borrowed resolution agrees with `resolve`, `lookup_ref` with
//! `lookup`, per-plan precomputation follows hot reloads and per-tenant
//! overrides, and the `tenant` span is still there for a subscriber.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use proptest::prelude::*;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_tenancy::resolve::{
    DefaultResolver, HeaderResolver, HostResolver, PathResolver, QueryResolver, RequestHead,
    Resolver, ResolverChain,
};
use tower_tenancy::store::MemoryStore;
use tower_tenancy::{
    AdmissionLayer, CachedDirectory, MemoryDirectory, Overrides, Plan, RateRule, Rule,
    TenancyLayer, Tenant, TenantDirectory, TenantIdRules,
};

fn chain() -> ResolverChain {
    ResolverChain::new()
        .or(HeaderResolver::new("x-tenant-id"))
        .or(PathResolver::after("tenants"))
        .or(QueryResolver::new("tenant"))
        .or(HostResolver::subdomain_of("example.com"))
        .or(DefaultResolver::new("public".parse().unwrap()))
}

/// Values for one source: ids, near-ids, escapes and garbage.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9][A-Za-z0-9._-]{0,10}",
        "[A-Za-z0-9%+._ -]{0,12}",
        "%[0-9A-F]{2}[a-z]{0,4}",
        ".{0,8}",
    ]
}

/// A request built from optional header, path, query and host values
/// (`None` when `http` refuses to build it).
fn request(
    header: Option<Vec<u8>>,
    path: Option<String>,
    query: Option<String>,
    host: Option<String>,
) -> Option<Request<()>> {
    let mut uri = match &path {
        Some(p) => format!("/v1/tenants/{p}/jobs"),
        None => "/v1/jobs".into(),
    };
    if let Some(q) = &query {
        uri.push_str("?x=1&tenant=");
        uri.push_str(q);
    }
    let mut builder = Request::get(uri);
    if let Some(h) = header {
        builder = builder.header("x-tenant-id", h);
    }
    if let Some(h) = host {
        builder = builder.header("host", format!("{h}.example.com"));
    }
    builder.body(()).ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// `resolve_ref` (borrowing) and `resolve` (owning) give the same
    /// answer, error included, for every built-in source and the chain.
    #[test]
    fn borrowed_resolution_agrees_with_owned(
        header in prop::option::of(prop_oneof![value().prop_map(String::into_bytes), prop::collection::vec(any::<u8>(), 0..8)]),
        path in prop::option::of(value()),
        query in prop::option::of(value()),
        host in prop::option::of(value()),
    ) {
        let Some(req) = request(header, path, query, host) else { return Ok(()) };
        let head = RequestHead::of(&req);
        let resolvers: Vec<Box<dyn Resolver>> = vec![
            Box::new(HeaderResolver::new("x-tenant-id")),
            Box::new(HeaderResolver::new("x-tenant-id").rules(TenantIdRules::default().max_len(4).lowercase(true))),
            Box::new(PathResolver::after("tenants")),
            Box::new(PathResolver::segment(2)),
            Box::new(QueryResolver::new("tenant")),
            Box::new(HostResolver::subdomain_of("example.com")),
            Box::new(chain()),
        ];
        for r in &resolvers {
            let owned = r.resolve(&head);
            let borrowed = r.resolve_ref(&head).map(|id| id.map(|id| id.into_owned()));
            prop_assert_eq!(owned, borrowed);
        }
    }
}

#[test]
fn validate_agrees_with_parse() {
    let rules = TenantIdRules::default().max_len(8).lowercase(true);
    for s in [
        "",
        "a",
        "ACME",
        "acme-1",
        "-a",
        "a b",
        "toolongvalue",
        "é",
        "A.b_C",
    ] {
        assert_eq!(
            rules.validate(s).map(|id| id.into_owned()),
            rules.parse(s),
            "{s:?}"
        );
        assert_eq!(
            rules.validate_bytes(s.as_bytes()).map(|id| id.into_owned()),
            rules.parse_bytes(s.as_bytes())
        );
    }
}

#[tokio::test]
async fn lookup_ref_agrees_with_lookup() {
    let directory = MemoryDirectory::new();
    let plan = Arc::new(Plan::new("free"));
    directory.insert(Tenant::new("acme".parse().unwrap(), plan));
    let cached = CachedDirectory::new(directory.clone());
    let rules = TenantIdRules::default();
    for id in ["acme", "globex"] {
        let owned = id.parse().unwrap();
        let borrowed = rules.validate(id).unwrap();
        for d in [&directory as &dyn TenantDirectory, &cached] {
            let a = d.lookup(&owned).await.unwrap().map(|t| t.id().clone());
            let b = d
                .lookup_ref(&borrowed)
                .await
                .unwrap()
                .map(|t| t.id().clone());
            assert_eq!(a, b, "{id}");
            // Twice: the second answer comes from the cache.
            let c = d
                .lookup_ref(&borrowed)
                .await
                .unwrap()
                .map(|t| t.id().clone());
            assert_eq!(a, c, "{id}, cached");
        }
    }
}

#[test]
fn tenants_without_overrides_share_their_plan() {
    let plan = Arc::new(Plan::new("free").limit("workflows", 5));
    let a = Tenant::new("a".parse().unwrap(), plan.clone());
    let b = Tenant::new("b".parse().unwrap(), plan.clone());
    assert!(Arc::ptr_eq(a.plan(), b.plan()));
    let c = Tenant::with_overrides(
        "c".parse().unwrap(),
        plan.clone(),
        Default::default(),
        Overrides::default().limit("workflows", 9),
    );
    assert!(!Arc::ptr_eq(c.plan(), &plan));
    assert_eq!(c.plan().limit_of("workflows"), Some(9.into()));
    assert_eq!(a.plan().limit_of("workflows"), Some(5.into()));
}

/// The `RateLimit-Policy` value is computed once per plan: it follows a
/// tenant's overrides, a tenant moved to another plan and a hot reload of
/// the plan, and never mixes two plans up.
#[tokio::test]
async fn policy_values_follow_plans_overrides_and_reloads() {
    let minute = Duration::from_secs(60);
    let free = Arc::new(Plan::new("free").rate("api", RateRule::new(10, minute)));
    let pro = Arc::new(Plan::new("pro").rate("api", RateRule::new(100, minute)));
    let directory = MemoryDirectory::new();
    directory.insert(Tenant::new("a".parse().unwrap(), free.clone()));
    directory.insert(Tenant::new("b".parse().unwrap(), pro.clone()));
    directory.insert(Tenant::with_overrides(
        "c".parse().unwrap(),
        free.clone(),
        Default::default(),
        Overrides::default().rate("api", RateRule::new(7, Duration::from_secs(30))),
    ));
    let svc = ServiceBuilder::new()
        .layer(TenancyLayer::new(
            HeaderResolver::new("x-tenant-id"),
            directory.clone(),
        ))
        .layer(AdmissionLayer::new(MemoryStore::new()).rule(Rule::rate("api")))
        .service(service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(()))
        }));
    let policy = |tenant: &'static str| {
        let svc = svc.clone();
        async move {
            let req = Request::get("/")
                .header("x-tenant-id", tenant)
                .body(())
                .unwrap();
            let res = svc.oneshot(req).await.unwrap();
            res.headers()["ratelimit-policy"]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    for _ in 0..3 {
        assert_eq!(policy("a").await, "\"api\";q=10;w=60");
        assert_eq!(policy("b").await, "\"api\";q=100;w=60");
        assert_eq!(policy("c").await, "\"api\";q=7;w=30");
    }
    // A tenant moved to another plan.
    directory.update(&"a".parse().unwrap(), |t| t.set_plan(pro.clone()));
    assert_eq!(policy("a").await, "\"api\";q=100;w=60");
    // A reload: new plan objects with new limits, old ones dropped.
    let free2 = Arc::new(Plan::new("free").rate("api", RateRule::new(20, minute)));
    directory.replace_all([
        Tenant::new("a".parse().unwrap(), free2.clone()),
        Tenant::new("b".parse().unwrap(), free2),
    ]);
    drop((free, pro));
    assert_eq!(policy("a").await, "\"api\";q=20;w=60");
    assert_eq!(policy("b").await, "\"api\";q=20;w=60");
}

/// A subscriber still sees the `tenant` span with the id around the
/// handler (the span is skipped only when nobody listens).
#[test]
fn the_tenant_span_reaches_a_subscriber() {
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let directory = MemoryDirectory::new();
    directory.insert(Tenant::new(
        "acme".parse().unwrap(),
        Arc::new(Plan::new("free")),
    ));
    let svc = ServiceBuilder::new()
        .layer(TenancyLayer::new(
            HeaderResolver::new("x-tenant-id"),
            directory,
        ))
        .service(service_fn(|_req: Request<()>| async {
            tracing::info!("in the handler");
            Ok::<_, Infallible>(Response::new(()))
        }));
    tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let req = Request::get("/")
            .header("x-tenant-id", "acme")
            .body(())
            .unwrap();
        rt.block_on(svc.oneshot(req)).unwrap();
    });
    let out = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        out.contains("tenant{tenant.id=acme}") && out.contains("in the handler"),
        "{out}"
    );
}
