//! The request path resolves and looks up a known tenant without a heap
//! allocation: the id is borrowed from the request and the directory's
//! `Arc<Tenant>` owns it (issue 11).
//!
//! Counted on the test's own thread: the path is synchronous.

#[path = "common/counting_alloc.rs"]
mod counting_alloc;

use std::sync::Arc;

use http::Request;
use tower_tenancy::resolve::{
    DefaultResolver, HeaderResolver, HostResolver, PathResolver, QueryResolver, RequestHead,
    Resolver, ResolverChain,
};
use tower_tenancy::{CachedDirectory, MemoryDirectory, Plan, Tenant, TenantDirectory};

/// Allocations made by `f`.
fn allocations<T>(f: impl FnOnce() -> T) -> (u64, T) {
    let before = counting_alloc::allocations_on_this_thread();
    let out = f();
    (counting_alloc::allocations_on_this_thread() - before, out)
}

#[test]
fn known_tenants_are_resolved_and_found_without_allocating() {
    let directory = MemoryDirectory::new();
    let plan = Arc::new(Plan::new("free"));
    for id in ["acme", "globex", "initech"] {
        directory.insert(Tenant::new(id.parse().unwrap(), plan.clone()));
    }
    let chain = ResolverChain::new()
        .or(HeaderResolver::new("x-tenant-id"))
        .or(PathResolver::after("tenants"))
        .or(QueryResolver::new("tenant"))
        .or(HostResolver::subdomain_of("example.com"));
    let requests = [
        Request::get("/")
            .header("x-tenant-id", "acme")
            .body(())
            .unwrap(),
        Request::get("/v1/tenants/globex/jobs").body(()).unwrap(),
        Request::get("/x?a=1&tenant=initech").body(()).unwrap(),
        Request::get("/")
            .header("host", "acme.example.com:8080")
            .body(())
            .unwrap(),
    ];
    for req in &requests {
        let head = RequestHead::of(req);
        let (count, found) = allocations(|| {
            let id = chain.resolve_ref(&head).unwrap().unwrap();
            let tenant = directory
                .lookup_ref(&id)
                .try_take()
                .unwrap()
                .unwrap()
                .unwrap();
            tenant.id().as_str().len()
        });
        assert!(found > 0);
        assert_eq!(count, 0, "{} allocated {count} times", req.uri());
    }

    // The owning paths still allocate, which shows the counter counts:
    // `resolve` builds an owned id.
    let head = RequestHead::of(&requests[0]);
    let (count, id) = allocations(|| chain.resolve(&head).unwrap().unwrap());
    assert_eq!(id.as_str(), "acme");
    assert!(count >= 1, "an owned id is allocated");

    // Decoding or lowercasing makes an owned id (expected), and a default
    // tenant is a reference-count increment.
    let escaped = Request::get("/v1/tenants/glo%62ex/jobs").body(()).unwrap();
    let (count, _) = allocations(|| chain.resolve_ref(&RequestHead::of(&escaped)).unwrap());
    assert!(count >= 1);
    let default = DefaultResolver::new("acme".parse().unwrap());
    let (count, _) = allocations(|| default.resolve_ref(&RequestHead::of(&requests[1])).unwrap());
    assert_eq!(count, 0);

    // A cached directory answers a cached tenant in place, without a boxed
    // future or an owned id.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let cached = CachedDirectory::new(directory.clone());
    let acme = "acme".parse().unwrap();
    rt.block_on(cached.lookup(&acme)).unwrap().unwrap(); // fills the cache
    let head = RequestHead::of(&requests[0]);
    let (count, hit) = allocations(|| {
        let id = chain.resolve_ref(&head).unwrap().unwrap();
        cached.lookup_ref(&id).try_take()
    });
    assert_eq!(hit.unwrap().unwrap().unwrap().id().as_str(), "acme");
    assert_eq!(count, 0, "a cached answer allocated {count} times");
}
