//! The demo (examples/axum_server.rs) in its PostgreSQL mode, over real
//! sockets: two instances against one PostgreSQL started by the test, each
//! with its own pool, listener and caches, like two processes.
//!
//! * API keys: 401 without or with a bad key, the key's tenant by default,
//!   403 for another tenant claimed in the header or the query;
//! * row-level security through the demo's own handlers, which have no
//!   `WHERE tenant_id`: a tenant never lists, deletes or runs another's rows;
//! * a key revoked and a tenant changed on instance A apply on instance B
//!   (figures: `FIGURES` lines with `--nocapture`);
//! * an outage: cached keys and tenants keep working, an unknown key gets
//!   503 with `Retry-After`, and both instances recover by themselves;
//! * the demo refuses a role that row-level security would not apply to.
#![cfg(feature = "postgres")]

#[path = "../examples/axum_server.rs"]
#[allow(dead_code)]
mod example;
#[path = "common/http.rs"]
mod http_util;
#[path = "common/postgres_server.rs"]
mod postgres_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use http_util::{send, HttpClient, Reply, TestServer};
use postgres_server::{create_app_role, PgServer, SUPERUSER};
use serde_json::Value;
use tower_tenancy::directory::postgres::{Change, RECHECK};
use tower_tenancy::store::MemoryStore;
use tower_tenancy::Catalog;

use example::postgres as pg_demo;

const ADMIN: (&str, &str) = ("authorization", "Bearer s3cret");
const PLANS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/plans.toml");
/// Generous: with 10 min cache TTLs only a notification can apply a change
/// this fast; the bound only fails when the mechanism is broken.
const DEADLINE: Duration = Duration::from_secs(15);

struct Instance {
    server: TestServer,
    client: HttpClient,
    pg: pg_demo::Pg,
}

async fn instance(pg: &PgServer) -> Instance {
    let conn = pg_demo::connect(&pg.url("tt_app")).await.unwrap();
    let catalog = Catalog::from_path(PLANS).unwrap();
    pg_demo::seed(&conn.pool, &catalog, false).await.unwrap();
    tokio::time::timeout(DEADLINE, conn.changes.listening())
        .await
        .expect("listening");
    let app = pg_demo::demo(&conn, PLANS, "s3cret", Arc::new(MemoryStore::new()));
    Instance {
        server: TestServer::start(app).await,
        client: http_util::client(),
        pg: conn,
    }
}

impl Instance {
    async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut req = Request::builder().method(method).uri(self.server.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        send(
            &self.client,
            req.body(Full::new(Bytes::from(body.to_owned()))).unwrap(),
        )
        .await
    }

    async fn get(&self, path: &str, key: &str) -> Reply {
        let auth = format!("Bearer {key}");
        self.call("GET", path, &[("authorization", &auth)], "")
            .await
    }

    async fn new_key(&self, tenant: &str) -> (String, String) {
        let r = self
            .call(
                "POST",
                &format!("/admin/tenants/{tenant}/keys"),
                &[ADMIN],
                "",
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        let v = r.json();
        (
            v["id"].as_str().unwrap().to_owned(),
            v["key"].as_str().unwrap().to_owned(),
        )
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn figure(name: &str, v: &mut [Duration]) {
    v.sort();
    println!(
        "FIGURES demo {name}: {} changes, p50 {:.1} ms, max {:.1} ms",
        v.len(),
        percentile(v, 0.5).as_secs_f64() * 1e3,
        v.last().unwrap().as_secs_f64() * 1e3,
    );
}

/// Polls until `done(reply)`; the time since `since`.
async fn until(
    inst: &Instance,
    path: &str,
    key: &str,
    since: Instant,
    done: impl Fn(&Reply) -> bool,
) -> Duration {
    loop {
        let r = inst.get(path, key).await;
        if done(&r) {
            return since.elapsed();
        }
        assert!(since.elapsed() < DEADLINE, "not applied: {:?}", r.body);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_on_postgres_two_instances() {
    let pg = PgServer::new();
    create_app_role(&pg, "tt_app").await;
    // A superuser bypasses row-level security: the demo refuses it.
    let refused = pg_demo::connect(&pg.url(SUPERUSER)).await.err().unwrap();
    assert!(refused.contains("BYPASSRLS"), "{refused}");

    let a = instance(&pg).await;
    let b = instance(&pg).await;
    let (_, acme) = a.new_key("acme").await;
    let (_, globex) = a.new_key("globex").await;

    // --- authentication
    let r = a.call("GET", "/v1/me", &[], "").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(r.json()["code"], "unauthenticated");
    for bad in [
        "nope".to_owned(),
        // Right id, wrong secret (last digit changed).
        format!(
            "{}{}",
            &acme[..acme.len() - 1],
            if acme.ends_with('0') { '1' } else { '0' }
        ),
        acme.to_uppercase(),
        format!("ttk_{}_{}", "0".repeat(16), "0".repeat(64)), // unknown id
    ] {
        let r = b.get("/v1/me", &bad).await;
        assert_eq!(r.status, 401, "{bad}: {:?}", r.body);
    }
    // The key's tenant, on either instance.
    for inst in [&a, &b] {
        let r = inst.get("/v1/me", &acme).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.json()["tenant"], "acme");
        assert_eq!(r.json()["plan"], "free");
    }
    // Claiming another tenant, alone or next to its own: 403.
    let auth = format!("Bearer {acme}");
    for (path, headers) in [
        ("/v1/me", vec![("x-tenant-id", "globex")]),
        ("/v1/me?tenant=globex", vec![]),
        ("/v1/me?tenant=globex", vec![("x-tenant-id", "acme")]),
        ("/v1/me?tenant=acme", vec![("x-tenant-id", "globex")]),
    ] {
        let mut h = headers.clone();
        h.push(("authorization", &auth));
        let r = a.call("GET", path, &h, "").await;
        assert_eq!(r.status, 403, "{path} {headers:?}: {:?}", r.body);
        assert_eq!(r.json()["code"], "tenant_not_permitted");
    }
    let r = a
        .call("GET", "/v1/me?tenant=acme", &[("authorization", &auth)], "")
        .await;
    assert_eq!(r.status, 200);

    // --- row-level security through handlers without WHERE tenant_id
    let create = |inst: &'static str, key: &str, name: &str| {
        let (auth, body) = (format!("Bearer {key}"), format!(r#"{{"name":"{name}"}}"#));
        let inst = if inst == "a" { &a } else { &b };
        async move {
            let r = inst
                .call("POST", "/v1/workflows", &[("authorization", &auth)], &body)
                .await;
            assert_eq!(r.status, 201, "{:?}", r.body);
            r.json()["id"].as_i64().unwrap()
        }
    };
    let acme_wf = create("a", &acme, "acme-1").await;
    let globex_wf = create("b", &globex, "globex-1").await;
    create("a", &globex, "globex-2").await;
    let names = |r: Reply| -> Vec<String> {
        r.json()["workflows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(b.get("/v1/workflows", &acme).await), ["acme-1"]);
    assert_eq!(
        names(a.get("/v1/workflows", &globex).await),
        ["globex-1", "globex-2"]
    );
    // acme cannot delete, run or read globex's workflow, even by its id.
    let r = a
        .call(
            "DELETE",
            &format!("/v1/workflows/{globex_wf}"),
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(r.status, 404);
    let r = a
        .call(
            "POST",
            &format!("/v1/workflows/{globex_wf}/executions"),
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(r.status, 404);
    let r = a
        .get(&format!("/v1/workflows/{globex_wf}/executions"), &acme)
        .await;
    assert_eq!(r.json()["executions"], Value::Array(vec![]));
    assert_eq!(names(a.get("/v1/workflows", &globex).await).len(), 2);
    // Its own: fine.
    let r = a
        .call(
            "POST",
            &format!("/v1/workflows/{acme_wf}/executions"),
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // Usage counts through RLS too.
    let r = b
        .call("GET", "/admin/tenants/globex/usage", &[ADMIN], "")
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let workflows = r.json()["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["policy"] == "workflows")
        .cloned()
        .unwrap();
    assert_eq!(workflows["used"], 2, "{workflows}");

    // --- changes on A apply on B: revocations and tenant changes
    let rounds = if std::env::var("TT_LONG").is_ok_and(|v| v == "1") {
        100
    } else {
        10
    };
    let (mut revoked_in, mut changed_in) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (key_id, key) = a.new_key("initech").await;
        assert_eq!(b.get("/v1/me", &key).await.status, 200); // cached on B
        let r = a
            .call("DELETE", &format!("/admin/keys/{key_id}"), &[ADMIN], "")
            .await;
        assert_eq!(r.status, 204);
        let since = Instant::now();
        revoked_in.push(until(&b, "/v1/me", &key, since, |r| r.status == 401).await);

        let n = 1000 + round;
        let (_, initech) = (0, a.new_key("initech").await.1);
        let body = format!(r#"{{"overrides": {{"limits": {{"workflows": {n}}}}}}}"#);
        assert_eq!(b.get("/v1/me", &initech).await.status, 200);
        let r = a
            .call("PATCH", "/admin/tenants/initech", &[ADMIN], &body)
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let since = Instant::now();
        changed_in.push(
            until(&b, "/v1/me", &initech, since, |r| {
                r.status == 200 && r.json()["limits"]["workflows"] == n
            })
            .await,
        );
    }
    figure("key revoked on A, refused on B", &mut revoked_in);
    figure("tenant changed on A, applied on B", &mut changed_in);

    // A bad change is refused before it commits: no instance ever sees it.
    let r = a
        .call(
            "PATCH",
            "/admin/tenants/acme",
            &[ADMIN],
            r#"{"overrides": {"limits": {"a b": 1}}}"#,
        )
        .await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    let r = a
        .call(
            "PATCH",
            "/admin/tenants/acme",
            &[ADMIN],
            r#"{"plan": "gold"}"#,
        )
        .await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert_eq!(b.get("/v1/me", &acme).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_on_postgres_outage() {
    let mut pg = PgServer::new();
    create_app_role(&pg, "tt_app").await;
    let a = instance(&pg).await;
    let mut feed = a.pg.changes.subscribe();
    let (_, acme) = a.new_key("acme").await;
    let (_, globex) = a.new_key("globex").await;
    // Each new key is announced to every instance, which drops it from its
    // cache at once and again `RECHECK` later: wait for both announcements
    // and those re-checks, so that what is cached next stays cached.
    for _ in 0..2 {
        let key_change = async {
            while !matches!(feed.recv().await, Ok(Change::Other { ref kind, .. }) if kind == "api_key")
            {
            }
        };
        tokio::time::timeout(DEADLINE, key_change)
            .await
            .expect("key announced");
    }
    tokio::time::sleep(RECHECK * 4).await;
    assert_eq!(a.get("/v1/me", &acme).await.status, 200); // key and tenant cached

    pg.stop();
    // Cached key and tenant: served (routes that need no table).
    let r = a.get("/v1/me", &acme).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // A key never seen by this instance: 503 with Retry-After.
    let r = a.get("/v1/me", &globex).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.json()["code"], "unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    // A route that needs the tables: 503 too, never a panic.
    let r = a.get("/v1/workflows", &acme).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.header("retry-after"), Some("1"));

    pg.start();
    let up = Instant::now();
    let back = until(&a, "/v1/me", &globex, up, |r| r.status == 200).await;
    let r = a.get("/v1/workflows", &acme).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    println!(
        "FIGURES demo outage: unknown key 503 while down; served again {:.0} ms after restart",
        back.as_secs_f64() * 1e3
    );
}
