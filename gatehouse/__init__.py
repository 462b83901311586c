"""Gatehouse: a gRPC authorization and tenant-config sidecar for multi-tenant platforms."""

__version__ = "0.1.0"
