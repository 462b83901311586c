-- Scopes no longer admit `.` or `..` segments (issue 11: `emea/de/../fr` was a scope
-- *below* `emea/de` while a caller building scopes from paths means `emea/fr`). Such
-- scopes are refused in every request from this version on, so a role assignment
-- (or an API key's role grant, the same table) stored at one can never match a check
-- again, and RevokeRole could no longer name it to remove it. This step removes them
-- the way an admin write would: in this one transaction, each affected tenant's
-- revision goes up by one, with one audit row (actor `migration`) naming every removed
-- assignment, and one outbox event per tenant (kind `assignment`, tenant-wide) so
-- every sidecar forgets what it held. Tenants without such rows are untouched.
--
-- Migrations run as the table owner, whom FORCE ROW LEVEL SECURITY binds too: the
-- platform scope '*' makes every tenant's rows visible for this transaction only.

SELECT set_config('gatehouse.tenant_id', '*', true);

WITH removed AS (
    DELETE FROM role_assignments
    WHERE '/' || scope || '/' ~ '/\.\.?/'
    RETURNING tenant_id, subject_type, subject_id, role, scope
), per_tenant AS (
    SELECT tenant_id,
           jsonb_agg(jsonb_build_object(
               'subject', subject_type || '/' || subject_id, 'role', role, 'scope', scope
           ) ORDER BY subject_type, subject_id, role, scope) AS assignments
    FROM removed
    GROUP BY tenant_id
), bumped AS (
    UPDATE tenants t SET revision = t.revision + 1, updated_at = now()
    FROM per_tenant p
    WHERE t.id = p.tenant_id
    RETURNING t.id, t.revision, p.assignments
), audited AS (
    INSERT INTO audit_log (tenant_id, actor, action, target, outcome, reason, details)
    SELECT id, 'migration', 'role.revoke', 'tenant/' || id, 'ok', 'GATEHOUSE_SCOPE_DOT_SEGMENT',
           jsonb_build_object('migration', 3, 'removed', assignments)
    FROM bumped
)
INSERT INTO outbox (tenant_id, revision, kind, subject, payload)
SELECT id, revision, 'assignment', NULL, jsonb_build_object('migration', 3)
FROM bumped;
