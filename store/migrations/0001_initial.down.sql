-- Undoes 0001_initial.up.sql completely (policies and triggers go with their tables).
DROP TABLE outbox;
DROP TABLE audit_log;
DROP TABLE role_assignments;
DROP TABLE memberships;
DROP TABLE roles;
DROP TABLE tenants;
DROP TABLE plans;
DROP FUNCTION gatehouse_tenant_visible(uuid);
DROP FUNCTION gatehouse_stamp_status_change();
DROP FUNCTION gatehouse_touch_updated_at();
