-- The two roles of README "Database roles", made once when the postgres volume is new:
-- `gatehouse` owns the schema (`gatehouse migrate` connects as it), `gatehouse_app` owns
-- nothing and is bound by row-level security (`serve` and `relay` connect as it).
-- Laptop passwords: never reuse them anywhere else.
CREATE ROLE gatehouse LOGIN PASSWORD 'gatehouse-owner-dev' NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
CREATE ROLE gatehouse_app LOGIN PASSWORD 'gatehouse-app-dev' NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
CREATE DATABASE gatehouse OWNER gatehouse;
