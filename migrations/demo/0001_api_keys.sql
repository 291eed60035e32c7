-- The demo's API keys (examples/postgres/): applied after the directory's
-- migrations by examples/axum_server.rs when DATABASE_URL is set.
--
-- A key is `ttk_<id>_<secret>`: `id` (16 hex digits) is public and indexed,
-- `secret` is 32 random bytes (64 hex digits). Only the SHA-256 of the whole
-- key is stored; the key itself is shown once, when it is created.
-- Revoking (revoked_at set, or the row deleted) notifies `api_key:<id>`.

CREATE TABLE tt_api_keys (
    id          text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{16}$'),
    key_sha256  bytea NOT NULL CHECK (length(key_sha256) = 32),
    tenant_id   text NOT NULL REFERENCES tt_tenants (id) ON DELETE CASCADE,
    label       text NOT NULL DEFAULT '' CHECK (length(label) <= 100),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE INDEX tt_api_keys_tenant ON tt_api_keys (tenant_id);

CREATE TRIGGER tt_api_keys_notify AFTER INSERT OR UPDATE OR DELETE ON tt_api_keys
    FOR EACH ROW EXECUTE FUNCTION tt_notify_change('api_key', 'id');
CREATE TRIGGER tt_api_keys_truncate AFTER TRUNCATE ON tt_api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION tt_notify_all();
