//! Row-level security of the demo's tables (migrations/demo/0002_workflows.sql)
//! against a real PostgreSQL: statements that forget `WHERE tenant_id = …`
//! still read, change and delete only the current tenant's rows and cannot
//! insert or move a row into another tenant; nothing is visible without the
//! setting; a pooled connection carries nothing over to the next request.
//! Checked for the tables' owner (an ordinary role: FORCE ROW LEVEL
//! SECURITY) and for another role with plain grants — and the two ways to
//! escape it (no FORCE for the owner, a superuser) are shown to escape it,
//! so the checks are not vacuous.
#![cfg(feature = "postgres")]

#[path = "../examples/axum_server.rs"]
#[allow(dead_code)]
mod example;
#[path = "common/postgres_server.rs"]
mod postgres_server;

use example::postgres::{tenant_tx, DEMO_MIGRATIONS};
use postgres_server::{create_app_role, pool, PgServer, SUPERUSER};
use tower_tenancy::directory::postgres::tokio_postgres::error::SqlState;
use tower_tenancy::directory::postgres::{deadpool_postgres::Pool, migrate, DIRECTORY_MIGRATIONS};
use tower_tenancy::TenantId;

fn id(s: &str) -> TenantId {
    s.parse().unwrap()
}

/// Inserts `name` as `tenant`; the new id.
async fn insert(pool: &Pool, tenant: &str, name: &str) -> i64 {
    let mut conn = pool.get().await.unwrap();
    let tx = tenant_tx(&mut conn, &id(tenant)).await.unwrap();
    let row = tx
        .query_one(
            "INSERT INTO workflows (name) VALUES ($1) RETURNING id",
            &[&name],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    row.get(0)
}

/// `(tenant_id, name)` of every row `tenant` sees, no WHERE.
async fn visible(pool: &Pool, tenant: &str) -> Vec<(String, String)> {
    let mut conn = pool.get().await.unwrap();
    let tx = tenant_tx(&mut conn, &id(tenant)).await.unwrap();
    let rows = tx
        .query("SELECT tenant_id, name FROM workflows ORDER BY id", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// Runs `sql` as `tenant`; the SQLSTATE it failed with, or the row count.
async fn exec(pool: &Pool, tenant: &str, sql: &str) -> Result<u64, SqlState> {
    let mut conn = pool.get().await.unwrap();
    let tx = tenant_tx(&mut conn, &id(tenant)).await.unwrap();
    match tx.execute(sql, &[]).await {
        Ok(n) => {
            tx.commit().await.unwrap();
            Ok(n)
        }
        Err(e) => Err(e.code().cloned().expect("a server error")),
    }
}

fn all(rows: &[(String, String)], tenant: &str) -> bool {
    rows.iter().all(|(t, _)| t == tenant)
}

async fn forgetful_statements_stay_in_their_tenant(pool: &Pool, role: &str) {
    let acme_1 = insert(pool, "acme", &format!("{role}-acme-1")).await;
    insert(pool, "acme", &format!("{role}-acme-2")).await;
    let globex_1 = insert(pool, "globex", &format!("{role}-globex-1")).await;

    // Read without WHERE: only the current tenant's rows.
    let seen = visible(pool, "acme").await;
    assert!(all(&seen, "acme") && !seen.is_empty(), "{role}: {seen:?}");
    let globex_before = visible(pool, "globex").await;
    assert!(all(&globex_before, "globex") && !globex_before.is_empty());

    // Update and read by another tenant's id: nothing.
    assert_eq!(
        exec(pool, "acme", "UPDATE workflows SET name = 'pwned'").await,
        Ok(seen.len() as u64)
    );
    assert_eq!(
        exec(
            pool,
            "acme",
            &format!("UPDATE workflows SET name = 'pwned' WHERE id = {globex_1}")
        )
        .await,
        Ok(0)
    );
    assert_eq!(visible(pool, "globex").await, globex_before, "{role}");

    // Insert into or move a row to another tenant: refused by WITH CHECK.
    assert_eq!(
        exec(
            pool,
            "acme",
            "INSERT INTO workflows (tenant_id, name) VALUES ('globex', 'planted')"
        )
        .await,
        Err(SqlState::INSUFFICIENT_PRIVILEGE)
    );
    assert_eq!(
        exec(pool, "acme", "UPDATE workflows SET tenant_id = 'globex'").await,
        Err(SqlState::INSUFFICIENT_PRIVILEGE)
    );
    // An execution of another tenant's workflow: no such (tenant, workflow).
    assert_eq!(
        exec(
            pool,
            "acme",
            &format!("INSERT INTO executions (workflow_id, status) VALUES ({globex_1}, 'x')")
        )
        .await,
        Err(SqlState::FOREIGN_KEY_VIOLATION)
    );
    assert_eq!(
        exec(
            pool,
            "acme",
            &format!("INSERT INTO executions (workflow_id, status) VALUES ({acme_1}, 'ok')")
        )
        .await,
        Ok(1)
    );
    assert_eq!(
        exec(pool, "globex", "UPDATE executions SET status = 'pwned'").await,
        Ok(0)
    );

    // Delete without WHERE: only its own.
    let acme_rows = visible(pool, "acme").await.len() as u64;
    assert_eq!(
        exec(pool, "acme", "DELETE FROM workflows").await,
        Ok(acme_rows)
    );
    assert!(visible(pool, "acme").await.is_empty());
    assert_eq!(visible(pool, "globex").await, globex_before, "{role}");

    // Without the setting: nothing visible, nothing writable.
    let conn = pool.get().await.unwrap();
    let n: i64 = conn
        .query_one("SELECT count(*) FROM workflows", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "{role}: rows visible without app.tenant_id");
    let e = conn
        .execute("INSERT INTO workflows (name) VALUES ('orphan')", &[])
        .await
        .unwrap_err();
    assert!(e.code().is_some(), "{e}");
    let n = conn
        .execute("UPDATE workflows SET name = 'pwned'", &[])
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_level_security_keeps_tenants_apart() {
    let pg = PgServer::new();
    create_app_role(&pg, "tt_app").await;
    create_app_role(&pg, "tt_other").await;
    // The owner (an ordinary role) applies the migrations, like the demo.
    let owner = pool(&pg, "tt_app", 1);
    let mut conn = owner.get().await.unwrap();
    migrate(&mut conn, DIRECTORY_MIGRATIONS).await.unwrap();
    migrate(&mut conn, DEMO_MIGRATIONS).await.unwrap();
    conn.batch_execute(
        "INSERT INTO tt_plans (name) VALUES ('free');
         INSERT INTO tt_tenants (id, plan) VALUES ('acme', 'free'), ('globex', 'free');
         GRANT SELECT, INSERT, UPDATE, DELETE ON workflows, executions TO tt_other;",
    )
    .await
    .unwrap();
    drop(conn);

    // One connection per pool: every transaction reuses the connection of the
    // one before, so a setting that outlived its transaction would show.
    forgetful_statements_stay_in_their_tenant(&owner, "owner").await;
    let other = pool(&pg, "tt_other", 1);
    forgetful_statements_stay_in_their_tenant(&other, "grantee").await;

    // The setting ends with its transaction, also after a failed one.
    let _ = exec(
        &owner,
        "acme",
        "INSERT INTO workflows (id, name) VALUES (1, 'x')",
    )
    .await;
    let conn = owner.get().await.unwrap();
    let left: Option<String> = conn
        .query_one(
            "SELECT nullif(current_setting('app.tenant_id', true), '')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, None);
    drop(conn);

    // Controls: the ways around RLS do get around it (so the checks above
    // would fail if the policies were missing).
    insert(&owner, "acme", "control-acme").await;
    insert(&owner, "globex", "control-globex").await;
    let superuser = pool(&pg, SUPERUSER, 1);
    let n: i64 = superuser
        .get()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM workflows", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n >= 2, "a superuser bypasses RLS and sees every tenant");
    owner
        .get()
        .await
        .unwrap()
        .batch_execute("ALTER TABLE workflows NO FORCE ROW LEVEL SECURITY")
        .await
        .unwrap();
    let seen = visible(&owner, "acme").await;
    assert!(
        !all(&seen, "acme"),
        "without FORCE the owner sees every tenant: {seen:?}"
    );
    // …while a grantee is still confined.
    assert!(all(&visible(&other, "acme").await, "acme"));
}
