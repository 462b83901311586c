"""Gatehouse's light Python client: grpcio and protobuf, nothing of the server's.

    from gatehouse_client import Client, AsyncClient, Decision, GatehouseError

`Client` / `AsyncClient` (gatehouse_client/client.py): `check`, `check_many`, `config`,
`watch_config`, and `admin.<every AdminService method, snake_cased>`. The generated
messages and stubs are `gatehouse_client.v1` (`./dev protos` makes them from protos/).
"""

from gatehouse_client.calls import ADMIN_METHODS, Decision, as_subject, is_tenant_id
from gatehouse_client.client import Admin, AsyncAdmin, AsyncClient, Client
from gatehouse_client.errors import GatehouseError

__all__ = [
    "ADMIN_METHODS",
    "Admin",
    "AsyncAdmin",
    "AsyncClient",
    "as_subject",
    "is_tenant_id",
    "Client",
    "Decision",
    "GatehouseError",
]
