//! The resolver chain on arbitrary requests: never panics, and answers
//! exactly what its first member with something to say answers.
#![no_main]

use arbitrary::Arbitrary;
use http::header::{HeaderValue, HOST};
use http::{Request, Uri};
use libfuzzer_sys::fuzz_target;
use tower_tenancy::resolve::{
    DefaultResolver, HeaderResolver, HostResolver, PathResolver, QueryResolver, RequestHead,
    Resolver, ResolverChain,
};

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    uri: &'a [u8],
    tenant_headers: Vec<&'a [u8]>,
    host_headers: Vec<&'a [u8]>,
    with_default: bool,
}

fuzz_target!(|input: Input<'_>| {
    let mut req = Request::new(());
    if let Ok(uri) = Uri::try_from(input.uri) {
        *req.uri_mut() = uri;
    }
    for v in input.tenant_headers.iter().take(3) {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            req.headers_mut().append("x-tenant-id", v);
        }
    }
    for v in input.host_headers.iter().take(3) {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            req.headers_mut().append(HOST, v);
        }
    }
    let head = RequestHead::of(&req);
    let mut members: Vec<Box<dyn Resolver>> = vec![
        Box::new(HeaderResolver::new("x-tenant-id")),
        Box::new(PathResolver::after("tenants")),
        Box::new(QueryResolver::new("tenant")),
        Box::new(HostResolver::subdomain_of("example.com")),
    ];
    let mut chain = ResolverChain::new()
        .or(HeaderResolver::new("x-tenant-id"))
        .or(PathResolver::after("tenants"))
        .or(QueryResolver::new("tenant"))
        .or(HostResolver::subdomain_of("example.com"));
    if input.with_default {
        let public = "public".parse().unwrap();
        members.push(Box::new(DefaultResolver::new(public)));
        chain = chain.or(DefaultResolver::new("public".parse().unwrap()));
    }
    let want = members
        .iter()
        .map(|m| m.resolve(&head))
        .find(|r| !matches!(r, Ok(None)))
        .unwrap_or(Ok(None));
    assert_eq!(chain.resolve(&head), want);
});
