-- tower-tenancy: the tenant directory (plans, tenants, overrides).
-- Applied by `tower_tenancy::directory::postgres::migrate` with
-- `DIRECTORY_MIGRATIONS`; the migration name is recorded in tt_migrations.
--
-- Every committed change to a plan or a tenant sends a notification on the
-- channel `tower_tenancy` (payload `plan:<name>` or `tenant:<id>`; `*` after
-- a TRUNCATE). Each instance LISTENs on it and drops what it cached, so a
-- change made anywhere applies everywhere within the notification delay.

CREATE TABLE tt_plans (
    -- Same characters as tenant ids: plan names appear in headers and keys.
    name        text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    -- The plan in the catalog's JSON form, without its name:
    -- {"features": [...], "limits": {...}, "rates": {...}, "quotas": {...}, "concurrency": {...}}
    definition  jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(definition) = 'object'),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tt_tenants (
    -- The default TenantIdRules: 1 to 64 of [A-Za-z0-9._-], alphanumeric first.
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    plan        text NOT NULL REFERENCES tt_plans (name) ON UPDATE CASCADE,
    status      text NOT NULL DEFAULT 'active'
                CHECK (status IN ('active', 'suspended', 'expired', 'deleted')),
    -- Per-tenant overrides in the catalog's JSON form.
    overrides   jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(overrides) = 'object'),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX tt_tenants_plan ON tt_tenants (plan);

-- Row triggers: TG_ARGV[0] is the kind, TG_ARGV[1] the key column.
-- pg_notify runs at commit: a rolled-back change notifies no one, and
-- identical payloads of one transaction are sent once.
CREATE FUNCTION tt_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('tower_tenancy', TG_ARGV[0] || ':' || (to_jsonb(OLD) ->> TG_ARGV[1]));
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM pg_notify('tower_tenancy', TG_ARGV[0] || ':' || (to_jsonb(NEW) ->> TG_ARGV[1]));
    END IF;
    RETURN NULL;
END
$$;

-- TRUNCATE has no rows: everything may have changed.
CREATE FUNCTION tt_notify_all() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tower_tenancy', '*');
    RETURN NULL;
END
$$;

CREATE TRIGGER tt_plans_notify AFTER INSERT OR UPDATE OR DELETE ON tt_plans
    FOR EACH ROW EXECUTE FUNCTION tt_notify_change('plan', 'name');
CREATE TRIGGER tt_plans_truncate AFTER TRUNCATE ON tt_plans
    FOR EACH STATEMENT EXECUTE FUNCTION tt_notify_all();
CREATE TRIGGER tt_tenants_notify AFTER INSERT OR UPDATE OR DELETE ON tt_tenants
    FOR EACH ROW EXECUTE FUNCTION tt_notify_change('tenant', 'id');
CREATE TRIGGER tt_tenants_truncate AFTER TRUNCATE ON tt_tenants
    FOR EACH STATEMENT EXECUTE FUNCTION tt_notify_all();
