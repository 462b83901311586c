-- Gatehouse schema, version 4: the W3C traceparent of the write that made an outbox row
-- (README "Traces"), so the relay's publish span can link to the admin write's trace.
--
-- NULL unless tracing is on and the write was sampled. The column fills itself from the
-- transaction-local setting `gatehouse.traceparent`, which the store sets with its BEGIN
-- (store/transactions.py), so no statement that inserts outbox rows names it: the write
-- tail, the multi-tenant append and older writers (a pgbench script, a psql session) all
-- leave it NULL or fill it without change. An unset custom setting reads as NULL with
-- `missing_ok`, one set earlier in the session and reset by its transaction's end as ''.
ALTER TABLE outbox
    ADD COLUMN traceparent text DEFAULT nullif(current_setting('gatehouse.traceparent', true), '');
