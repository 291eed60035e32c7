-- The demo's application data, isolated per tenant by row-level security.
--
-- Every request runs its queries in a transaction that first calls
-- `SELECT set_config('app.tenant_id', <CurrentTenant>, true)` (= SET LOCAL:
-- it ends with the transaction, so a pooled connection carries nothing over
-- to the next request). The policies compare each row's tenant_id with that
-- setting, so a query that forgets `WHERE tenant_id = ...` still sees and
-- changes only the current tenant's rows, and cannot insert or move a row
-- into another tenant. Without the setting, no row is visible or writable.
--
-- RLS never applies to superusers nor to roles with BYPASSRLS, and applies
-- to the table's owner only with FORCE ROW LEVEL SECURITY (set below): run
-- the application as an ordinary role (the demo refuses to start otherwise).

CREATE TABLE workflows (
    tenant_id   text NOT NULL DEFAULT current_setting('app.tenant_id', true)
                REFERENCES tt_tenants (id) ON DELETE CASCADE,
    id          bigint GENERATED ALWAYS AS IDENTITY,
    name        text NOT NULL CHECK (length(name) <= 100),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (id)
);

CREATE TABLE executions (
    tenant_id   text NOT NULL DEFAULT current_setting('app.tenant_id', true),
    id          bigint GENERATED ALWAYS AS IDENTITY,
    workflow_id bigint NOT NULL,
    status      text NOT NULL,
    duration_ms bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    -- An execution can only point at a workflow of its own tenant.
    FOREIGN KEY (tenant_id, workflow_id) REFERENCES workflows (tenant_id, id) ON DELETE CASCADE
);

ALTER TABLE workflows ENABLE ROW LEVEL SECURITY;
ALTER TABLE workflows FORCE ROW LEVEL SECURITY;
ALTER TABLE executions ENABLE ROW LEVEL SECURITY;
ALTER TABLE executions FORCE ROW LEVEL SECURITY;

-- USING filters what is read, updated and deleted; WITH CHECK what is
-- inserted or what an update turns a row into.
CREATE POLICY tenant_isolation ON workflows
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY tenant_isolation ON executions
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
