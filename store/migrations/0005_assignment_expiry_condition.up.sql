-- Gatehouse schema, version 5: a role assignment may expire and may carry a condition
-- (issue 18, "Expiring grants" and "Conditions").
--
-- `expires_at` NULL: the assignment never expires. Past it, the assignment grants nothing
-- in any sidecar at once, whatever the caches hold (the engine compares it with the
-- clock); the relay's sweeper deletes such rows later, each tenant's with a revision
-- bump, an audit row (`role.expire`) and an outbox event, in one transaction.
ALTER TABLE role_assignments ADD COLUMN expires_at timestamptz;
-- The sweeper's question, "which rows have expired?", without reading the whole table.
CREATE INDEX role_assignments_expiry_idx ON role_assignments (expires_at) WHERE expires_at IS NOT NULL;

-- A CEL expression (engine/conditions.py); '' = none, the assignment always applies. The
-- server type-checks it before storing it; one that no longer compiles never grants.
-- Bounded here too, so a row written by hand cannot make every load of it expensive.
ALTER TABLE role_assignments ADD COLUMN condition text NOT NULL DEFAULT ''
    CONSTRAINT role_assignments_condition_length CHECK (length(condition) <= 1024);
