-- Undoes 0002_api_keys_idempotency.up.sql (the policy goes with its table).
DROP TABLE idempotency_keys;
DROP TABLE api_keys;
