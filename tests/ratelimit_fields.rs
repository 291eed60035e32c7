//! The RateLimit fields of draft-ietf-httpapi-ratelimit-headers-11 and the
//! IANA `quota-exceeded` problem type, over a real HTTP server, every field
//! parsed with a strict RFC 8941/9651 parser (`sfv`) (issue 13).

#[path = "common/http.rs"]
mod http_util;

use std::collections::BTreeMap;

use axum::routing::get;
use axum::Router;
use http_util::{get as http_get, HttpClient, Reply, TestServer};
use sfv::{BareItem, ListEntry, Parser};
use tower_tenancy::reject::HeaderStyle;
use tower_tenancy::resolve::HeaderResolver;
use tower_tenancy::store::MemoryStore;
use tower_tenancy::{AdmissionLayer, Catalog, MemoryDirectory, Rule, TenancyLayer};

const PLANS: &str = r#"
[[plans]]
name = "small"
rates = { api = { limit = 3, window = "1m" }, slow = { limit = 50, window = "90s" } }
quotas = { daily = { limit = 3, period = "day" }, monthly = { limit = 100, period = "month" }, hourly = { limit = 100, period = "hour" } }
concurrency = { jobs = { limit = 2 } }
limits = { things = 10 }

[[plans]]
name = "roomy"
rates = { api = { limit = 100, window = "1m" } }
quotas = { daily = { limit = 2, period = "day" } }

[[tenants]]
id = "acme"
plan = "small"
[[tenants]]
id = "globex"
plan = "roomy"
[[tenants]]
id = "initech"
plan = "small"
"#;

/// One member of a parsed field: the name and its integer / string
/// parameters.
#[derive(Debug, Clone, PartialEq)]
struct Member {
    name: String,
    ints: BTreeMap<String, i64>,
    strings: BTreeMap<String, String>,
}

/// Parses an sf-list whose members are sf-strings with parameters; panics
/// (fails the test) on anything an RFC 9651 parser refuses or on another
/// shape.
fn parse_list(field: &str) -> Vec<Member> {
    let list: sfv::List = Parser::new(field)
        .parse()
        .unwrap_or_else(|e| panic!("not a valid sf-list: {field:?}: {e}"));
    list.into_iter()
        .map(|entry| {
            let ListEntry::Item(item) = entry else {
                panic!("inner list in {field:?}")
            };
            let name = item
                .bare_item
                .as_string()
                .unwrap_or_else(|| panic!("policy name is not an sf-string in {field:?}"))
                .as_str()
                .to_owned();
            let mut ints = BTreeMap::new();
            let mut strings = BTreeMap::new();
            for (key, value) in &item.params {
                match value {
                    BareItem::Integer(i) => {
                        ints.insert(key.as_str().to_owned(), i64::from(*i));
                    }
                    BareItem::String(s) => {
                        strings.insert(key.as_str().to_owned(), s.as_str().to_owned());
                    }
                    other => panic!("unexpected parameter {key:?}={other:?} in {field:?}"),
                }
            }
            Member {
                name,
                ints,
                strings,
            }
        })
        .collect()
}

fn app(style: Option<HeaderStyle>) -> Router {
    let catalog = Catalog::from_toml_str(PLANS).unwrap();
    // Time stands still (2026-12-03T10:00:30Z): no window, hour, day or
    // month can end between two requests of a test.
    let clock = std::sync::Arc::new(tower_tenancy::store::ManualClock::new(1_796_292_030_000));
    let mut every = AdmissionLayer::new(MemoryStore::with_clock(clock))
        .rule(Rule::rate("api"))
        .rule(Rule::rate("slow"))
        .rule(Rule::quota("daily"))
        .rule(Rule::quota("monthly"))
        .rule(Rule::quota("hourly"))
        .rule(Rule::concurrency("jobs"))
        .rule(Rule::gauge("things"));
    if let Some(style) = style {
        every = every.header_style(style);
    }
    Router::new()
        .route("/every", get(|| async { "ok" }).route_layer(every))
        .layer(TenancyLayer::new(
            HeaderResolver::new("x-tenant-id"),
            MemoryDirectory::from_catalog(&catalog),
        ))
}

async fn as_tenant(client: &HttpClient, url: &str, tenant: &str) -> Reply {
    http_get(client, url, &[("x-tenant-id", tenant)]).await
}

fn fields(r: &Reply) -> (Vec<Member>, Vec<Member>) {
    let policy = parse_list(r.header("ratelimit-policy").expect("RateLimit-Policy"));
    let state = parse_list(r.header("ratelimit").expect("RateLimit"));
    (policy, state)
}

#[tokio::test]
async fn every_policy_is_listed_with_its_window_and_unit() {
    let server = TestServer::start(app(None)).await;
    let client = http_util::client();
    let url = server.url("/every");
    let r = as_tenant(&client, &url, "acme").await;
    assert_eq!(r.status, 200);
    let (policy, state) = fields(&r);

    // Every rate, quota and concurrency policy, in rule order; the gauge
    // (a resource count, not a rate) is not a quota policy of requests.
    let names: Vec<&str> = policy.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["api", "slow", "daily", "monthly", "hourly", "jobs"]);
    let by_name = |name: &str| policy.iter().find(|m| m.name == name).unwrap().clone();
    let q_w = |m: &Member| (m.ints.get("q").copied(), m.ints.get("w").copied());
    assert_eq!(q_w(&by_name("api")), (Some(3), Some(60)));
    assert_eq!(q_w(&by_name("slow")), (Some(50), Some(90)));
    // Calendar quotas: `w` only where the period is a fixed number of seconds.
    assert_eq!(q_w(&by_name("daily")), (Some(3), Some(86_400)));
    assert_eq!(q_w(&by_name("hourly")), (Some(100), Some(3_600)));
    assert_eq!(q_w(&by_name("monthly")), (Some(100), None));
    // Concurrency: its unit, no window.
    let jobs = by_name("jobs");
    assert_eq!(q_w(&jobs), (Some(2), None));
    assert_eq!(jobs.strings["qu"], "concurrent-requests");
    for m in policy.iter().filter(|m| m.name != "jobs") {
        assert!(
            !m.strings.contains_key("qu"),
            "{m:?}: requests is the default unit"
        );
    }

    // RateLimit: r and t for each policy, the same names in the same order.
    let state_names: Vec<&str> = state.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(state_names, names);
    let r_t = |name: &str| {
        let m = state.iter().find(|m| m.name == name).unwrap();
        (m.ints["r"], m.ints["t"])
    };
    assert_eq!(r_t("api").0, 2);
    assert_eq!(r_t("daily").0, 2);
    assert_eq!(
        r_t("jobs").0,
        1,
        "the slot of this request is held while it runs"
    );
    assert_eq!(r_t("jobs").1, 0, "a concurrency limit has no window");
    let (_, t_api) = r_t("api");
    // Sub-bucket window: up to W + W/8 (a unit counts until its bucket left).
    assert!((1..=68).contains(&t_api), "{t_api}");
    let (_, t_daily) = r_t("daily");
    assert!((1..=86_400).contains(&t_daily), "{t_daily}");
    let (_, t_hourly) = r_t("hourly");
    assert!((1..=3_600).contains(&t_hourly), "{t_hourly}");
    let (_, t_monthly) = r_t("monthly");
    assert!((1..=31 * 86_400).contains(&t_monthly), "{t_monthly}");
    // No Retry-After on an admitted response.
    assert!(r.header("retry-after").is_none());
}

#[tokio::test]
async fn a_429_names_every_violated_policy_and_waits_for_the_longest() {
    let server = TestServer::start(app(None)).await;
    let client = http_util::client();
    let url = server.url("/every");
    // "api" allows 3 a minute and "daily" 3 a day: the 4th request violates
    // both (by construction, whatever the clock).
    for _ in 0..3 {
        assert_eq!(as_tenant(&client, &url, "initech").await.status, 200);
    }
    let r = as_tenant(&client, &url, "initech").await;
    assert_eq!(r.status, 429);
    let body = r.json();
    assert_eq!(
        body["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(
        body["violated-policies"],
        serde_json::json!(["api", "daily"])
    );
    // Our members stay.
    assert_eq!(body["tenant"], "initech");
    assert!(
        body["code"] == "rate_limited" || body["code"] == "quota_exceeded",
        "{body}"
    );
    assert!(body["limit"].is_u64() && body["usage"].is_u64() && body["retry_after"].is_u64());

    let (policy, state) = fields(&r);
    assert_eq!(policy.len(), 6);
    let retry_after: i64 = r.header("retry-after").unwrap().parse().unwrap();
    assert_eq!(body["retry_after"].as_i64(), Some(retry_after));
    for violated in ["api", "daily"] {
        let m = state.iter().find(|m| m.name == violated).unwrap();
        assert_eq!(m.ints["r"], 0, "{m:?}");
        // §6: Retry-After is never earlier than the end of the effective
        // window of a violated policy.
        assert!(
            retry_after >= m.ints["t"],
            "Retry-After {retry_after} < t of {m:?}"
        );
    }
    // It is the longest of the violated policies' waits.
    let longest = state
        .iter()
        .filter(|m| m.name == "api" || m.name == "daily")
        .map(|m| m.ints["t"])
        .max()
        .unwrap();
    assert_eq!(retry_after, longest);
}

#[tokio::test]
async fn a_single_violated_policy_and_other_refusals() {
    let server = TestServer::start(app(None)).await;
    let client = http_util::client();
    let url = server.url("/every");
    // "globex" has no "slow", "monthly", "hourly", "jobs" or "things": only
    // its own two policies are listed.
    for _ in 0..2 {
        let r = as_tenant(&client, &url, "globex").await;
        assert_eq!(r.status, 200);
        let (policy, _) = fields(&r);
        let names: Vec<&str> = policy.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["api", "daily"]);
    }
    let r = as_tenant(&client, &url, "globex").await;
    assert_eq!(r.status, 429);
    let body = r.json();
    assert_eq!(body["code"], "quota_exceeded");
    assert_eq!(body["violated-policies"], serde_json::json!(["daily"]));
    let (_, state) = fields(&r);
    let retry_after: i64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry_after >= state[1].ints["t"]);
    assert!(
        state[0].ints["r"] > 0,
        "the rate limit was not violated: {:?}",
        state[0]
    );

    // Refusals that are not quota policies keep their own types.
    let r = as_tenant(&client, &url, "nobody").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["type"], "urn:tower-tenancy:problem:unknown_tenant");
    assert!(r.json().get("violated-policies").is_none());
}

/// `HeaderStyle::MostRestrictive` keeps the 0.1 output.
#[tokio::test]
async fn the_previous_output_is_kept_on_request() {
    let server = TestServer::start(app(Some(HeaderStyle::MostRestrictive))).await;
    let client = http_util::client();
    let url = server.url("/every");
    let r = as_tenant(&client, &url, "globex").await;
    assert_eq!(r.status, 200);
    let (policy, state) = fields(&r);
    // One policy: the rate or quota rule with the least room left.
    assert_eq!(policy.len(), 1);
    assert_eq!(policy[0].name, "daily");
    assert_eq!(
        policy[0].ints.get("w"),
        None,
        "0.1 sent no window for quotas"
    );
    assert_eq!(state[0].ints["r"], 1);
    as_tenant(&client, &url, "globex").await;
    let r = as_tenant(&client, &url, "globex").await;
    assert_eq!(r.status, 429);
    let body = r.json();
    assert_eq!(body["type"], "urn:tower-tenancy:problem:quota_exceeded");
    assert!(body.get("violated-policies").is_none());

    // With the legacy fields too.
    let server = TestServer::start(app(Some(HeaderStyle::IetfAndLegacy))).await;
    let r = as_tenant(&client, &server.url("/every"), "globex").await;
    let (policy, _) = fields(&r);
    assert_eq!(policy.len(), 2, "every policy");
    assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("1"));
}
