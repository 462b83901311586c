-- API keys and idempotency keys (issue 6: admin security).

-- ---------------------------------------------------------------------------------------
-- API keys. The secret is shown once, at creation, as `gh_<id>_<secret>`; only its
-- Argon2id hash is kept. `id` is also the lookup prefix and the key's subject id
-- (`api_key/<id>`), so it is not secret. A tenant key (tenant_id set) is a member of its
-- tenant and holds roles like any subject; an operator key (tenant_id NULL) acts on the
-- platform and is visible only under platform scope.
-- ---------------------------------------------------------------------------------------

CREATE TABLE api_keys (
    id           text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{16}$'),
    tenant_id    uuid REFERENCES tenants (id),
    name         text NOT NULL DEFAULT '',
    secret_hash  text NOT NULL,
    -- The key's own limit: it may do only what these patterns match AND its roles grant
    -- (an operator key has no roles: the patterns are its grant).
    permissions  text[] NOT NULL,
    expires_at   timestamptz,
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    revoked_by   text NOT NULL DEFAULT ''
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id, created_at);

ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON api_keys
    USING (gatehouse_tenant_visible(tenant_id)) WITH CHECK (gatehouse_tenant_visible(tenant_id));

-- ---------------------------------------------------------------------------------------
-- Idempotency keys: one per (caller, key) for 24 hours. A call claims its key before it
-- runs (state 'running'), and stores its response when it succeeds ('done'); a retry with
-- the same request gets that response, with another request GATEHOUSE_IDEMPOTENCY_KEY_REUSED.
-- Not tenant data (keyed by the caller), so no row-level security.
-- ---------------------------------------------------------------------------------------

CREATE TABLE idempotency_keys (
    principal    text NOT NULL,
    key          text NOT NULL,
    method       text NOT NULL,
    request_hash bytea NOT NULL,
    state        text NOT NULL CHECK (state IN ('running', 'done')),
    response     bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
