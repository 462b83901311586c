-- Undoes 0005_assignment_expiry_condition.up.sql (an expiring assignment becomes permanent).
DROP INDEX role_assignments_expiry_idx;
ALTER TABLE role_assignments DROP COLUMN expires_at;
