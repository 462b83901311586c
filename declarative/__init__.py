"""Declarative state (`gatehouse apply -f` / `gatehouse export`), the pure part: the file's
schema and validation (schema), the values (model), the difference between live and
desired state as ordered steps (diff) and its printed plan (plan_text). No I/O beyond
reading the file; the calls to the server are in gatehouse.server.declarative_cli."""
