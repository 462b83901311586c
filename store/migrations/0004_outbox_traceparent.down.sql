-- Undoes 0004_outbox_traceparent.up.sql.
ALTER TABLE outbox DROP COLUMN traceparent;
