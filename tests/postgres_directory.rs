//! `PostgresDirectory` against a real PostgreSQL started by the test:
//! rows validated like a catalog, a change committed on one instance applied
//! by every instance through LISTEN/NOTIFY (with a control instance that
//! does not listen and keeps the old value), and an outage: cached tenants
//! keep working, unknown ones get 503 `unavailable` with `Retry-After`, and
//! everything recovers by itself when the server is back.
//!
//! Figures (`FIGURES` lines) with `--nocapture`; `TT_LONG=1` runs more rounds.
#![cfg(feature = "postgres")]

#[path = "common/http.rs"]
mod http_util;
#[path = "common/postgres_server.rs"]
mod postgres_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use postgres_server::{config, pool, PgServer, SUPERUSER};
use tower_tenancy::directory::postgres::{
    deadpool_postgres::Pool, migrate, tokio_postgres, PostgresChanges, PostgresDirectory,
    DIRECTORY_MIGRATIONS,
};
use tower_tenancy::directory::TenantDirectory;
use tower_tenancy::resolve::HeaderResolver;
use tower_tenancy::{CachedDirectory, CurrentTenant, TenancyLayer, TenantId, TenantStatus};

/// Generous: with a one-hour cache TTL only a notification can make a
/// change visible; this bound only fails when the mechanism is broken.
const DEADLINE: Duration = Duration::from_secs(15);

fn long() -> bool {
    std::env::var("TT_LONG").is_ok_and(|v| v == "1")
}

fn id(s: &str) -> TenantId {
    s.parse().unwrap()
}

async fn setup(pg: &PgServer) -> Pool {
    let pool = pool(pg, SUPERUSER, 4);
    let applied = migrate(&mut pool.get().await.unwrap(), DIRECTORY_MIGRATIONS)
        .await
        .unwrap();
    assert_eq!(applied, ["tower_tenancy/0001_directory"]);
    // A second run applies nothing.
    let again = migrate(&mut pool.get().await.unwrap(), DIRECTORY_MIGRATIONS)
        .await
        .unwrap();
    assert!(again.is_empty());
    pool.get()
        .await
        .unwrap()
        .batch_execute(
            r#"
            INSERT INTO tt_plans (name, definition) VALUES
              ('free', '{"features": ["export"], "limits": {"workflows": 5},
                         "rates": {"api": {"limit": 60, "window": "1m"}}}'),
              ('pro',  '{"features": ["export", "sso"], "limits": {"workflows": 50}}');
            INSERT INTO tt_tenants (id, plan, status, overrides) VALUES
              ('acme', 'free', 'active', '{}'),
              ('globex', 'pro', 'active', '{}'),
              ('initech', 'free', 'suspended', '{"limits": {"workflows": 7}}');
            "#,
        )
        .await
        .unwrap();
    pool
}

/// One application instance: its own pool, listener and cache.
struct Instance {
    cache: Arc<CachedDirectory<PostgresDirectory>>,
    changes: PostgresChanges,
}

async fn instance(pg: &PgServer, listen: bool) -> Instance {
    let changes = PostgresChanges::listen(config(pg, SUPERUSER), tokio_postgres::NoTls);
    let directory = PostgresDirectory::new(pool(pg, SUPERUSER, 4))
        .timeout(Duration::from_secs(2))
        .follow(&changes);
    let cache = Arc::new(CachedDirectory::new(directory).ttl(Duration::from_secs(3600)));
    if listen {
        changes.invalidate(cache.clone());
        tokio::time::timeout(DEADLINE, changes.listening())
            .await
            .expect("listener up");
    }
    Instance { cache, changes }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_become_tenants() {
    let pg = PgServer::new();
    let pool = setup(&pg).await;
    let dir = PostgresDirectory::new(pool.clone());

    let acme = dir.lookup(&id("acme")).await.unwrap().unwrap();
    assert_eq!(acme.status(), TenantStatus::Active);
    assert_eq!(acme.plan().name, "free");
    assert!(acme.plan().has_feature("export"));
    assert!(acme.plan().rates.contains_key("api"));
    let initech = dir.lookup(&id("initech")).await.unwrap().unwrap();
    assert_eq!(initech.status(), TenantStatus::Suspended);
    assert_eq!(
        initech.plan().limit_of("workflows"),
        Some(tower_tenancy::Limit::Max(7))
    );
    assert!(dir.lookup(&id("nobody")).await.unwrap().is_none());

    // A row that does not validate is a directory error, not a panic.
    pool.get()
        .await
        .unwrap()
        .batch_execute(r#"UPDATE tt_plans SET definition = '{"limits": {"workflows": "lots"}}' WHERE name = 'pro'"#)
        .await
        .unwrap();
    let err = dir.lookup(&id("globex")).await.unwrap_err();
    assert!(err.0.contains("plan \"pro\".limits.workflows"), "{err}");

    // The schema refuses ids the crate would refuse.
    let bad = pool
        .get()
        .await
        .unwrap()
        .execute(
            "INSERT INTO tt_tenants (id, plan) VALUES ('../x', 'free')",
            &[],
        )
        .await;
    assert!(bad.is_err());
}

type Check = Box<dyn Fn(&tower_tenancy::Tenant) -> bool>;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Polls `cache` until `check` holds for `tenant`; the time it took.
async fn until_seen(
    cache: &CachedDirectory<PostgresDirectory>,
    tenant: &TenantId,
    check: impl Fn(&tower_tenancy::Tenant) -> bool,
    since: Instant,
) -> Duration {
    loop {
        if let Ok(Some(t)) = cache.lookup(tenant).await {
            if check(&t) {
                return since.elapsed();
            }
        }
        assert!(
            since.elapsed() < DEADLINE,
            "change to {tenant} not applied within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_committed_on_one_instance_applies_on_every_instance() {
    let pg = PgServer::new();
    let admin = setup(&pg).await;
    let a = instance(&pg, true).await;
    let b = instance(&pg, true).await;
    // The control: same cache, never told about changes.
    let control = instance(&pg, false).await;
    let rounds = if long() { 300 } else { 30 };
    let acme = id("acme");
    let (mut on_a, mut on_b) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for inst in [&a, &b, &control] {
            inst.cache.lookup(&acme).await.unwrap().unwrap(); // cached
        }
        // Plan, status and override changes in turn; each round's value differs
        // from the previous one.
        let (sql, check): (String, Check) = match round % 3 {
            0 => {
                let plan = if round / 3 % 2 == 0 { "pro" } else { "free" };
                (
                    format!("UPDATE tt_tenants SET plan = '{plan}' WHERE id = 'acme'"),
                    Box::new(move |t| t.plan().name == plan),
                )
            }
            1 => {
                let status = if round / 3 % 2 == 0 {
                    "suspended"
                } else {
                    "active"
                };
                (
                    format!("UPDATE tt_tenants SET status = '{status}' WHERE id = 'acme'"),
                    Box::new(move |t| t.status().as_str() == status),
                )
            }
            _ => {
                let n = 100 + round as u64;
                (
                    format!(
                        r#"UPDATE tt_tenants SET overrides = '{{"limits": {{"workflows": {n}}}}}' WHERE id = 'acme'"#
                    ),
                    Box::new(move |t| {
                        t.plan().limit_of("workflows") == Some(tower_tenancy::Limit::Max(n))
                    }),
                )
            }
        };
        let before = control.cache.lookup(&acme).await.unwrap().unwrap();
        assert!(
            !check(&before),
            "round {round}: the change must change something"
        );
        // Committed through instance A's own pool.
        a.cache.lookup(&acme).await.unwrap().unwrap();
        let client = admin.get().await.unwrap();
        client.batch_execute(&sql).await.unwrap();
        let committed = Instant::now();
        drop(client);
        let (la, lb) = tokio::join!(
            until_seen(&a.cache, &acme, &check, committed),
            until_seen(&b.cache, &acme, &check, committed)
        );
        on_a.push(la);
        on_b.push(lb);
        // The control instance still serves the old row from its cache: the
        // others saw the change because they were notified.
        let stale = control.cache.lookup(&acme).await.unwrap().unwrap();
        assert!(
            !check(&stale),
            "round {round}: control instance changed too"
        );
        control.cache.invalidate_all();
    }
    // A rolled-back change notifies no one and changes nothing.
    {
        let mut client = admin.get().await.unwrap();
        let tx = client.transaction().await.unwrap();
        tx.batch_execute("UPDATE tt_tenants SET status = 'deleted' WHERE id = 'acme'")
            .await
            .unwrap();
        tx.rollback().await.unwrap();
    }
    assert_ne!(
        b.cache.lookup(&acme).await.unwrap().unwrap().status(),
        TenantStatus::Deleted
    );
    // A new tenant is found at once, although its id was negatively cached.
    assert!(b.cache.lookup(&id("hooli")).await.unwrap().is_none());
    admin
        .get()
        .await
        .unwrap()
        .batch_execute("INSERT INTO tt_tenants (id, plan) VALUES ('hooli', 'free')")
        .await
        .unwrap();
    let started = Instant::now();
    until_seen(&b.cache, &id("hooli"), |_| true, started).await;

    for (name, v) in [
        ("instance A (committer)", &mut on_a),
        ("instance B", &mut on_b),
    ] {
        v.sort();
        println!(
            "FIGURES invalidation {name}: {} changes, p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
            v.len(),
            percentile(v, 0.5).as_secs_f64() * 1e3,
            percentile(v, 0.9).as_secs_f64() * 1e3,
            v.last().unwrap().as_secs_f64() * 1e3,
        );
    }
    assert!(a.changes.is_listening() && b.changes.is_listening());
}

async fn whoami(tenant: CurrentTenant) -> String {
    format!("{} {}", tenant.id(), tenant.plan().name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_cached_tenants_work_unknown_get_503_and_it_recovers() {
    let mut pg = PgServer::new();
    let admin = setup(&pg).await;
    let inst = instance(&pg, true).await;
    let app = Router::new()
        .route("/", get(whoami))
        .layer(TenancyLayer::new(
            HeaderResolver::new("x-tenant-id"),
            inst.cache.clone(),
        ));
    let server = http_util::TestServer::start(app).await;
    let client = http_util::client();
    let call = |tenant: &'static str| {
        let (client, url) = (client.clone(), server.url("/"));
        async move { http_util::get(&client, &url, &[("x-tenant-id", tenant)]).await }
    };
    assert_eq!(call("acme").await.status, 200); // now cached
    drop(admin);

    pg.stop();
    let down = Instant::now();
    // Cached: still served.
    let r = call("acme").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // Exists in the database, never looked up: 503 unavailable + Retry-After.
    let asked = Instant::now();
    let r = call("globex").await;
    let refused_in = asked.elapsed();
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["code"], "unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    // Still served from the cache for the whole outage (2 s; 10 s with
    // TT_LONG=1), while the listener keeps failing to reconnect.
    let hold = if long() { 10 } else { 2 };
    let mut served = 0;
    while down.elapsed() < Duration::from_secs(hold) {
        let r = call("acme").await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        served += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!inst.changes.is_listening());

    pg.start();
    let up = Instant::now();
    let outage = up - down;
    // Recovers by itself: globex is found once the pool reconnects…
    let recovered = loop {
        let r = call("globex").await;
        if r.status == 200 {
            break up.elapsed();
        }
        assert!(up.elapsed() < DEADLINE, "globex not served after restart");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // …and the listener is back: a change is applied again.
    tokio::time::timeout(DEADLINE, inst.changes.listening())
        .await
        .expect("listener back");
    let relisten = up.elapsed();
    pool(&pg, SUPERUSER, 1)
        .get()
        .await
        .unwrap()
        .batch_execute("UPDATE tt_tenants SET plan = 'pro' WHERE id = 'acme'")
        .await
        .unwrap();
    let committed = Instant::now();
    let applied = until_seen(
        &inst.cache,
        &id("acme"),
        |t| t.plan().name == "pro",
        committed,
    )
    .await;
    assert_eq!(call("acme").await.body, "acme pro");
    println!(
        "FIGURES outage: down {:.0} ms, {served} cached requests served; unknown tenant refused in {:.1} ms (503, Retry-After: 1); \
         after restart: lookups back in {:.0} ms, listener back in {:.0} ms, next change applied in {:.1} ms",
        outage.as_secs_f64() * 1e3,
        refused_in.as_secs_f64() * 1e3,
        recovered.as_secs_f64() * 1e3,
        relisten.as_secs_f64() * 1e3,
        applied.as_secs_f64() * 1e3,
    );
}
