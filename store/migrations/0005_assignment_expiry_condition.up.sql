-- Gatehouse schema, version 5: a role assignment may expire (issue 18, "Expiring grants").
--
-- `expires_at` NULL: the assignment never expires. Past it, the assignment grants nothing
-- in any sidecar at once, whatever the caches hold (the engine compares it with the
-- clock); the relay's sweeper deletes such rows later, each tenant's with a revision
-- bump, an audit row (`role.expire`) and an outbox event, in one transaction.
ALTER TABLE role_assignments ADD COLUMN expires_at timestamptz;
-- The sweeper's question, "which rows have expired?", without reading the whole table.
CREATE INDEX role_assignments_expiry_idx ON role_assignments (expires_at) WHERE expires_at IS NOT NULL;
