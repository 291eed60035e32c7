//! Overrides that end by themselves (`until`, RFC 3339 UTC): the strict
//! parser against the `time` crate as an oracle (property tests), the plan
//! switching at `until` on the next request with nobody acting — over a real
//! socket, with the counters in memory and in a real Redis — and the demo's
//! admin API accepting and showing it, with the usage report saying which
//! value applies, until when, and what applies then.

#[path = "../examples/axum_server.rs"]
#[allow(dead_code)]
mod example;
#[path = "common/http.rs"]
mod http_util;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use http_util::{get as http_get, send, HttpClient, TestServer};
use proptest::prelude::*;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tower_tenancy::resolve::HeaderResolver;
use tower_tenancy::store::{CounterStore, MemoryStore};
use tower_tenancy::usage::usage_report;
use tower_tenancy::{
    AdmissionLayer, Catalog, Limit, MemoryDirectory, RedisStore, RequireFeatureLayer, Rule,
    TenancyLayer, UtcTime,
};

/// The oracle: `time`'s RFC 3339 parser, as milliseconds since the epoch
/// (`None`: refused, or before 1970).
fn oracle(s: &str) -> Option<i128> {
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp_nanos().div_euclid(1_000_000))
}

fn mine(s: &str) -> Option<i128> {
    UtcTime::parse(s).ok().map(|t| i128::from(t.unix_ms()))
}

/// A string close to RFC 3339: each part drawn from valid and invalid
/// values, with what the oracle's answer must be mapped through to give
/// ours (UTC only, 1 to 9 fraction digits, no leap second, from 1970).
#[derive(Debug, Clone)]
struct Near {
    text: String,
    /// Differences where the oracle may accept and we must refuse.
    utc: bool,
    fraction_ok: bool,
    leap: bool,
    year: u32,
    /// `T` or `t` between date and time (the oracle also takes a space).
    separator_ok: bool,
}

fn near() -> impl Strategy<Value = Near> {
    (
        (0u32..=9999, 0u32..=13, 0u32..=32),
        (0u32..=24, 0u32..=60, 0u32..=60),
        prop::sample::select(vec!["T", "t", " ", "x", "TT"]),
        prop::option::of(0usize..=11),
        prop::sample::select(vec![
            "Z", "z", "+00:00", "-00:00", "+01:00", "-05:30", "", "ZZ", "+0000", "Z ",
        ]),
        prop::sample::select(vec!["-", "/", "--"]),
        any::<u64>(),
    )
        .prop_map(
            |((y, mo, d), (h, mi, s), t, fraction, offset, dash, seed)| {
                let mut text = format!("{y:04}{dash}{mo:02}-{d:02}{t}{h:02}:{mi:02}:{s:02}");
                if let Some(n) = fraction {
                    text.push('.');
                    let digits = format!("{seed:020}");
                    text.push_str(&digits[..n]);
                }
                text.push_str(offset);
                Near {
                    text,
                    utc: matches!(offset, "Z" | "z" | "+00:00" | "-00:00"),
                    fraction_ok: fraction.is_none_or(|n| (1..=9).contains(&n)),
                    leap: s == 60,
                    year: y,
                    separator_ok: matches!(t, "T" | "t"),
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// Every instant the oracle formats parses to the same millisecond, and
    /// ours formats back to a string the oracle reads as the same instant.
    #[test]
    fn oracle_formatted_instants(ms in 0i64..253_402_300_800_000, nanos in 0u32..1_000_000) {
        let t = OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(ms) * 1_000_000 + i128::from(nanos),
        ).unwrap();
        let text = t.format(&Rfc3339).unwrap();
        prop_assert_eq!(mine(&text), Some(i128::from(ms)), "{}", text);
        let ours = UtcTime::from_unix_ms(ms as u64).to_string();
        prop_assert_eq!(oracle(&ours), Some(i128::from(ms)), "{}", ours);
    }

    /// Near-valid strings: we accept exactly what the oracle accepts, less
    /// what we refuse on purpose (offsets other than UTC, leap seconds,
    /// fractions beyond 9 digits, years before 1970, a space for the `T`),
    /// with equal values.
    #[test]
    fn near_valid_strings_agree(n in near()) {
        let expected = if n.utc && n.fraction_ok && !n.leap && n.year >= 1970 && n.separator_ok {
            oracle(&n.text)
        } else {
            None
        };
        prop_assert_eq!(mine(&n.text), expected, "{:?}", n);
    }

    /// Arbitrary short strings over the format's alphabet: whatever we
    /// accept, the oracle accepts with the same value.
    #[test]
    fn anything_we_accept_the_oracle_accepts(s in "[0-9TtZz:. +-]{0,32}") {
        if let Some(ms) = mine(&s) {
            prop_assert_eq!(oracle(&s), Some(ms), "{:?}", s);
        }
    }

    /// Arbitrary input never panics.
    #[test]
    fn no_panics(s in "\\PC{0,64}") {
        let _ = UtcTime::parse(&s);
    }
}

// ---------------------------------------------------------------------------
// The plan switches at `until`, over a real socket, memory and Redis.

/// A catalog whose tenant `acme` has, until `until`, 10 calls per minute
/// instead of 3 and the `export` feature. `until` is written as a bare TOML
/// datetime.
fn catalog(until: UtcTime) -> Catalog {
    Catalog::from_toml_str(&format!(
        r#"
[[plans]]
name = "free"
rates = {{ api = {{ limit = 3, window = "1m" }} }}

[[tenants]]
id = "acme"
plan = "free"
overrides = {{ until = {until}, features = {{ export = true }}, rates = {{ api = {{ limit = 10, window = "1m" }} }} }}
"#
    ))
    .unwrap()
}

fn app(directory: &MemoryDirectory, store: Arc<dyn CounterStore>) -> Router {
    let admission = AdmissionLayer::new(store).rule(Rule::rate("api"));
    Router::new()
        .route(
            "/export",
            get(|| async { "exported" }).layer(RequireFeatureLayer::new("export")),
        )
        .route("/me", get(|| async { "me" }).layer(admission))
        .layer(TenancyLayer::new(
            HeaderResolver::new("x-tenant-id"),
            directory.clone(),
        ))
}

async fn call(client: &HttpClient, server: &TestServer, path: &str) -> http_util::Reply {
    http_get(client, &server.url(path), &[("x-tenant-id", "acme")]).await
}

/// `q` of the `RateLimit-Policy` field.
fn quota(reply: &http_util::Reply) -> u64 {
    let policy = reply.header("ratelimit-policy").expect("RateLimit-Policy");
    http_util::parse_policy(policy).1
}

async fn switches_at_until(store: Arc<dyn CounterStore>, until: UtcTime) {
    let directory = MemoryDirectory::from_catalog(&catalog(until));
    let server = TestServer::start(app(&directory, store.clone())).await;
    let client = http_util::client();
    let tenant = directory.get(&"acme".parse().unwrap()).unwrap();

    // Before `until`: the override applies (4 calls pass a plan limit of 3).
    let report = usage_report(&*store, &tenant).await.unwrap();
    let api = &report.policies[0];
    assert_eq!(
        (api.source, api.until, api.then, api.limit),
        ("override", Some(until), Some(Limit::Max(3)), Limit::Max(10))
    );
    let r = call(&client, &server, "/export").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    for _ in 0..4 {
        let r = call(&client, &server, "/me").await;
        assert_eq!(r.status, 200);
        assert_eq!(quota(&r), 10);
    }
    assert!(
        UtcTime::now() < until,
        "the calls before `until` took more than the margin given to them"
    );

    // Nothing is done to the directory: time passes.
    while UtcTime::now() < until {
        let left = until.unix_ms() - UtcTime::now().unix_ms().min(until.unix_ms());
        tokio::time::sleep(Duration::from_millis(left + 1)).await;
    }

    // After `until`: the plan applies on the next request.
    let r = call(&client, &server, "/export").await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(r.json()["code"], "feature_not_in_plan");
    let r = call(&client, &server, "/me").await;
    assert_eq!(r.status, 429, "4 calls used, the plan allows 3");
    assert_eq!(quota(&r), 3);
    let report = usage_report(&*store, &tenant).await.unwrap();
    let api = &report.policies[0];
    assert_eq!(
        (api.source, api.until, api.then, api.limit, api.used),
        ("plan", None, None, Limit::Max(3), 4)
    );
}

#[tokio::test]
async fn plan_switches_at_until_with_memory_and_redis_counters() {
    let redis = redis_server::RedisServer::new();
    let redis_store = RedisStore::connect(redis.url()).await.unwrap();
    // A margin for the calls made before `until` on a busy machine.
    let until = UtcTime::from_unix_ms(UtcTime::now().unix_ms() + 6_000);
    tokio::join!(
        switches_at_until(Arc::new(MemoryStore::new()), until),
        switches_at_until(Arc::new(redis_store), until),
    );
}

#[test]
fn plan_at_switches_exactly_at_until() {
    let until: UtcTime = "2026-12-31T00:00:00Z".parse().unwrap();
    let catalog = catalog(until);
    let tenant = MemoryDirectory::from_catalog(&catalog)
        .get(&"acme".parse().unwrap())
        .unwrap();
    let at = |ms: u64| tenant.plan_at(UtcTime::from_unix_ms(ms));
    let limit = |ms| at(ms).rates["api"].limit;
    assert_eq!(limit(until.unix_ms() - 1), Limit::Max(10));
    assert!(at(until.unix_ms() - 1).has_feature("export"));
    assert_eq!(limit(until.unix_ms()), Limit::Max(3));
    assert!(!at(until.unix_ms()).has_feature("export"));
    assert!(Arc::ptr_eq(at(until.unix_ms()), tenant.base_plan()));
    assert!(tenant
        .overrides_at(UtcTime::from_unix_ms(until.unix_ms() - 1))
        .is_some());
    assert!(tenant.overrides_at(until).is_none());
    // A bad `until` in a catalog names its place.
    let err = Catalog::from_toml_str(
        "[[plans]]\nname = \"free\"\n[[tenants]]\nid = \"a\"\nplan = \"free\"\noverrides = { until = \"2026-12-31T00:00:00+01:00\" }\n",
    )
    .unwrap_err();
    assert!(err.path.contains("until"), "{err}");
    assert!(err.message.contains("only UTC"), "{err}");
}

// ---------------------------------------------------------------------------
// The demo's admin API.

async fn demo_call(
    client: &HttpClient,
    server: &TestServer,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> http_util::Reply {
    let req = Request::builder()
        .method(method)
        .uri(server.url(path))
        .header("authorization", "Bearer s3cret")
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .unwrap();
    send(client, req).await
}

fn policy<'a>(usage: &'a Value, name: &str) -> &'a Value {
    usage["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["policy"] == name)
        .unwrap_or_else(|| panic!("no {name} in {usage}"))
}

#[tokio::test]
async fn demo_admin_api_accepts_and_shows_until() {
    let plans = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/plans.toml");
    let catalog = Catalog::from_path(plans).unwrap();
    let app = example::demo(&catalog, plans, "s3cret", Arc::new(MemoryStore::new()));
    let server = TestServer::start(app).await;
    let client = http_util::client();

    // A boost until the end of 2099: accepted, shown, in force.
    let body = json!({"overrides": {"until": "2099-12-31T23:00:00Z", "limits": {"workflows": 7}}});
    let r = demo_call(&client, &server, "PATCH", "/admin/tenants/acme", Some(body)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let shown = r.json();
    assert_eq!(shown["overrides"]["until"], "2099-12-31T23:00:00Z");
    assert_eq!(shown["overrides_active"], true);
    assert_eq!(shown["effective"]["limits"]["workflows"], 7);
    let r = demo_call(&client, &server, "GET", "/admin/tenants/acme/usage", None).await;
    let workflows = policy(&r.json(), "workflows").clone();
    assert_eq!(workflows["source"], "override");
    assert_eq!(workflows["until"], "2099-12-31T23:00:00Z");
    assert_eq!(workflows["then"], 5);
    assert_eq!(workflows["limit"], 7);
    // Other policies come from the plan and carry no until.
    let api = policy(&r.json(), "api_calls_per_minute").clone();
    assert_eq!(api["source"], "plan");
    assert!(api.get("until").is_none() && api.get("then").is_none());

    // An override that has already ended: kept, shown, not in force.
    let body = json!({"overrides": {"until": "2020-01-01T00:00:00Z", "limits": {"workflows": 7}}});
    let r = demo_call(&client, &server, "PATCH", "/admin/tenants/acme", Some(body)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["overrides_active"], false);
    assert_eq!(r.json()["effective"]["limits"]["workflows"], 5);
    let r = demo_call(&client, &server, "GET", "/admin/tenants/acme/usage", None).await;
    let workflows = policy(&r.json(), "workflows").clone();
    assert_eq!(
        (&workflows["source"], &workflows["limit"]),
        (&json!("plan"), &json!(5))
    );

    // Malformed times are refused with the field's path.
    for bad in [
        "2099-12-31T23:00:00+01:00",
        "2099-02-30T00:00:00Z",
        "2099-12-31 23:00:00Z",
        "tomorrow",
    ] {
        let body = json!({"overrides": {"until": bad}});
        let r = demo_call(&client, &server, "PATCH", "/admin/tenants/acme", Some(body)).await;
        assert_eq!(r.status, 400, "{bad}");
        let problem = r.json();
        assert_eq!(problem["code"], "malformed_body");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .starts_with("overrides.until"),
            "{problem}"
        );
    }
}
