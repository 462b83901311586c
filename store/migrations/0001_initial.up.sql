-- Gatehouse schema, version 1: plans, tenants and their authorization data, the audit
-- log and the outbox, all tenant-scoped tables under forced row-level security.

-- ---------------------------------------------------------------------------------------
-- Shared trigger functions
-- ---------------------------------------------------------------------------------------

-- Keeps updated_at honest whoever writes the row (the store, an operator with psql).
CREATE FUNCTION gatehouse_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

-- A tenant's status_changed_at is when its status last changed, so the database stamps
-- it instead of trusting every caller to remember.
CREATE FUNCTION gatehouse_stamp_status_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        NEW.status_changed_at := now();
    END IF;
    RETURN NEW;
END
$$;

-- The row-level security predicate, in one place. `gatehouse.tenant_id` is set per
-- transaction by the store (set_config(..., true)); '*' is platform scope. When it is
-- unset, current_setting(..., true) is NULL or '' and nothing is visible. Plain SQL and
-- STABLE so the planner inlines it into every policy.
CREATE FUNCTION gatehouse_tenant_visible(row_tenant uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT current_setting('gatehouse.tenant_id', true) = '*'
        OR row_tenant::text = current_setting('gatehouse.tenant_id', true)
$$;

-- ---------------------------------------------------------------------------------------
-- Plans (platform-wide, not tenant data: no row-level security)
-- ---------------------------------------------------------------------------------------

CREATE TABLE plans (
    name        text PRIMARY KEY CHECK (name <> ''),
    -- {feature: {"default_enabled": bool, "gates": [permission pattern, ...]}}
    features    jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(features) = 'object'),
    quotas      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(quotas) = 'object'),
    rate_limits jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(rate_limits) = 'object'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER plans_touch BEFORE UPDATE ON plans
    FOR EACH ROW EXECUTE FUNCTION gatehouse_touch_updated_at();

INSERT INTO plans (name) VALUES ('default');

-- ---------------------------------------------------------------------------------------
-- Tenants
-- ---------------------------------------------------------------------------------------

CREATE TABLE tenants (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug              text NOT NULL
                      CONSTRAINT tenants_slug_key UNIQUE
                      CONSTRAINT tenants_slug_format CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$'),
    name              text NOT NULL,
    status            text NOT NULL DEFAULT 'draft'
                      CHECK (status IN ('draft', 'active', 'suspended', 'archived', 'deleted')),
    plan              text NOT NULL REFERENCES plans (name),
    region            text NOT NULL DEFAULT '',
    settings          jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),
    flag_overrides    jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(flag_overrides) = 'object'),
    quota_overrides   jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(quota_overrides) = 'object'),
    -- Bumped by every committed change to the tenant's authz or config data; caches
    -- stamp what they hold with it.
    revision          bigint NOT NULL DEFAULT 1 CHECK (revision >= 1),
    status_reason     text NOT NULL DEFAULT '',
    status_changed_by text NOT NULL DEFAULT '',
    status_changed_at timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
-- ListTenants pages by slug, optionally filtered by one of these.
CREATE INDEX tenants_status_slug_idx ON tenants (status, slug);
CREATE INDEX tenants_plan_slug_idx ON tenants (plan, slug);
CREATE INDEX tenants_region_slug_idx ON tenants (region, slug);

CREATE TRIGGER tenants_touch BEFORE UPDATE ON tenants
    FOR EACH ROW EXECUTE FUNCTION gatehouse_touch_updated_at();
CREATE TRIGGER tenants_status_change BEFORE UPDATE OF status ON tenants
    FOR EACH ROW EXECUTE FUNCTION gatehouse_stamp_status_change();

-- ---------------------------------------------------------------------------------------
-- Roles, members, role assignments
-- ---------------------------------------------------------------------------------------

CREATE TABLE roles (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    name        text NOT NULL CHECK (name <> ''),
    permissions text[] NOT NULL DEFAULT '{}',
    description text NOT NULL DEFAULT '',
    system      boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);
CREATE TRIGGER roles_touch BEFORE UPDATE ON roles
    FOR EACH ROW EXECUTE FUNCTION gatehouse_touch_updated_at();

CREATE TABLE memberships (
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    subject_type text NOT NULL CHECK (subject_type <> ''),
    subject_id   text NOT NULL CHECK (subject_id <> ''),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, subject_type, subject_id)
);

CREATE TABLE role_assignments (
    tenant_id    uuid NOT NULL,
    subject_type text NOT NULL,
    subject_id   text NOT NULL,
    role         text NOT NULL,
    scope        text NOT NULL DEFAULT '',  -- '' is the tenant root
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- The primary key leads with (tenant, subject): it is also the index the hot-path
    -- load of one subject's grants and the membership cascade use.
    PRIMARY KEY (tenant_id, subject_type, subject_id, role, scope),
    -- Removing a member removes its grants; a role cannot vanish from under a grant.
    CONSTRAINT role_assignments_member_fkey FOREIGN KEY (tenant_id, subject_type, subject_id)
        REFERENCES memberships (tenant_id, subject_type, subject_id) ON DELETE CASCADE,
    CONSTRAINT role_assignments_role_fkey FOREIGN KEY (tenant_id, role)
        REFERENCES roles (tenant_id, name)
);
-- "Is this role still assigned?" (DeleteRole) and the role foreign key.
CREATE INDEX role_assignments_role_idx ON role_assignments (tenant_id, role);

-- ---------------------------------------------------------------------------------------
-- Audit log and outbox (append-only; no foreign keys so they never block or vanish)
-- ---------------------------------------------------------------------------------------

CREATE TABLE audit_log (
    id         bigserial PRIMARY KEY,
    tenant_id  uuid,  -- NULL: a platform-wide event (a plan change), visible only under '*'
    actor      text NOT NULL,
    action     text NOT NULL,
    target     text NOT NULL DEFAULT '',
    request_id text NOT NULL DEFAULT '',
    outcome    text NOT NULL CHECK (outcome IN ('ok', 'denied', 'error')),
    reason     text NOT NULL DEFAULT '',
    details    jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
-- ListAuditEvents pages newest first by id, within a tenant or by actor or time.
CREATE INDEX audit_log_tenant_idx ON audit_log (tenant_id, id);
CREATE INDEX audit_log_actor_idx ON audit_log (actor, id);
CREATE INDEX audit_log_created_at_idx ON audit_log (created_at);

CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    tenant_id    uuid NOT NULL,
    revision     bigint NOT NULL,
    kind         text NOT NULL
                 CHECK (kind IN ('tenant', 'config', 'plan', 'role', 'membership', 'assignment', 'key')),
    subject      text,  -- 'user/alice' when only that subject's cache entries are stale
    payload      jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
-- The relay's work queue: small, because published rows fall out of it.
CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;

-- ---------------------------------------------------------------------------------------
-- Row-level security. FORCE, because the app role owns these tables and owners bypass
-- policies otherwise. A query that forgets its `WHERE tenant_id = ...` still cannot see
-- or write another tenant's rows.
-- ---------------------------------------------------------------------------------------

ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants
    USING (gatehouse_tenant_visible(id)) WITH CHECK (gatehouse_tenant_visible(id));

ALTER TABLE roles ENABLE ROW LEVEL SECURITY;
ALTER TABLE roles FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roles
    USING (gatehouse_tenant_visible(tenant_id)) WITH CHECK (gatehouse_tenant_visible(tenant_id));

ALTER TABLE memberships ENABLE ROW LEVEL SECURITY;
ALTER TABLE memberships FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON memberships
    USING (gatehouse_tenant_visible(tenant_id)) WITH CHECK (gatehouse_tenant_visible(tenant_id));

ALTER TABLE role_assignments ENABLE ROW LEVEL SECURITY;
ALTER TABLE role_assignments FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON role_assignments
    USING (gatehouse_tenant_visible(tenant_id)) WITH CHECK (gatehouse_tenant_visible(tenant_id));

ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_log
    USING (gatehouse_tenant_visible(tenant_id)) WITH CHECK (gatehouse_tenant_visible(tenant_id));

ALTER TABLE outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE outbox FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON outbox
    USING (gatehouse_tenant_visible(tenant_id)) WITH CHECK (gatehouse_tenant_visible(tenant_id));
