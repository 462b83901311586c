"""Postgres storage: migrations, the tenant-scoped reads and the transactional writes."""
