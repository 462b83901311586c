-- Undoes 0005_assignment_expiry_condition.up.sql. Without the columns an expiring
-- assignment would become permanent and a conditional one unconditional: nothing may
-- grant more after a downgrade than before, so those assignments are removed instead,
-- the way migration 3 removed its rows: per affected tenant, revision + 1, one audit row
-- (actor `migration`, the removed assignments in `details`) and one tenant-wide
-- `assignment` event, in this one transaction.

SELECT set_config('gatehouse.tenant_id', '*', true);

WITH removed AS (
    DELETE FROM role_assignments
    WHERE expires_at IS NOT NULL OR condition <> ''
    RETURNING tenant_id, subject_type, subject_id, role, scope, expires_at, condition
), per_tenant AS (
    SELECT tenant_id,
           jsonb_agg(jsonb_build_object(
               'subject', subject_type || '/' || subject_id, 'role', role, 'scope', scope,
               'expires_at', expires_at, 'condition', condition
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
    SELECT id, 'migration', 'role.revoke', 'tenant/' || id, 'ok', 'GATEHOUSE_SCHEMA_DOWNGRADE',
           jsonb_build_object('migration', 5, 'removed', assignments)
    FROM bumped
)
INSERT INTO outbox (tenant_id, revision, kind, subject, payload)
SELECT id, revision, 'assignment', NULL, jsonb_build_object('migration', 5)
FROM bumped;

DROP INDEX role_assignments_expiry_idx;
ALTER TABLE role_assignments DROP COLUMN condition;
ALTER TABLE role_assignments DROP COLUMN expires_at;
