"""Who may ask the hot path: CheckAccess, CheckAccessBatch, GetTenantConfig,
WatchTenantConfig, Envoy's ext_authz Check and the AuthZEN evaluations.

Off by default (`GATEHOUSE_CALLER_CREDENTIALS=off`): anyone who reaches a listener may ask,
and the listener is the boundary (loopback, a unix socket's file mode, mTLS). With
`required`, every such call needs a caller that holds the call's permission, `CHECK` or
`CONFIG`, for the call's tenant:

- an API key, `authorization: Bearer gh_…` (server/admin_auth.py):
  - an operator key (CreateApiKey without a tenant) whose own patterns match the
    permission may ask about every tenant;
  - a tenant key asks only about its own tenant, and only while the engine allows its
    subject `api_key/<id>` the permission there (its roles and its own limit), as for
    admin calls (`require_key_grant`);
- or, on an mTLS listener, a client certificate (verified against
  GATEHOUSE_TLS_CLIENT_CA_FILE) whose identity — a subject alternative name or, without
  one, the common name — `GATEHOUSE_CALLER_IDENTITIES_FILE` grants the permission, on
  every tenant or the ones it lists.

Like SpiceDB's and OpenFGA's preshared keys, a key is verified once (Argon2) and then
remembered by its SHA-256 digest until it is revoked anywhere (a `key` tenant event),
expires, or five minutes pass: a call pays a digest and a dict lookup, never a hash.
Failures: UNAUTHENTICATED (none, malformed, unknown, revoked, expired: one reason
`GATEHOUSE_KEY_REJECTED` for the last four), PERMISSION_DENIED (the permission or the
tenant is not the caller's: `GATEHOUSE_PERMISSION_DENIED`, `GATEHOUSE_OTHER_TENANT`),
RESOURCE_EXHAUSTED (the failed-authentication bounds of server/admin_auth.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import grpc
import yaml

from gatehouse.engine.model import SubjectRef, key_subject
from gatehouse.engine.patterns import PermissionSet, is_valid_pattern, is_valid_tenant_id
from gatehouse.errors import OtherTenant, PermissionDenied, Unauthenticated
from gatehouse.server.admin_auth import AdminAuthenticator, Principal, bearer
from gatehouse.server.admin_authz import require_key_grant
from gatehouse.server.decisions import DecisionService
from gatehouse.settings import Settings

CHECK = "gatehouse.access.check"  # CheckAccess(Batch), ext_authz Check, AuthZEN evaluation(s)
CONFIG = "gatehouse.config.read"  # GetTenantConfig, WatchTenantConfig
LOOKUP = "gatehouse.access.lookup"  # LookupSubjects, ListTenantsForSubject (server/lookup.py)

MODES = ("off", "required")


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a call presented: the bearer key ("" = none), the verified client certificate's
    names (() = none, or no mTLS), and the client's address (for the failed-auth budget)."""

    bearer: str
    identities: tuple[str, ...]
    peer: str

    @classmethod
    def from_grpc(cls, context: grpc.aio.ServicerContext[Any, Any]) -> "Credentials":
        """From a gRPC call's `authorization` metadata and, without one, its TLS peer.
        Raises Unauthenticated when the metadata holds more than one or a malformed one."""
        metadata = context.invocation_metadata() or ()
        for key, _ in metadata:
            if key == "authorization":
                return cls(bearer(tuple(metadata)), (), context.peer())
        return cls("", grpc_identities(context.auth_context()), context.peer())

    @classmethod
    def from_http(
        cls, authorization: Sequence[str], peercert: Mapping[str, Any] | None, peer: str
    ) -> "Credentials":
        """From an HTTP request's `Authorization` header values and the TLS peer certificate
        as `ssl.SSLSocket.getpeercert()` gives it (None without mTLS)."""
        if authorization:
            return cls(bearer([("authorization", value) for value in authorization]), (), peer)
        return cls("", http_identities(peercert), peer)


def grpc_identities(auth_context: Mapping[str, Iterable[bytes]]) -> tuple[str, ...]:
    """A gRPC TLS peer's names: its subject alternative names, else its common name (the
    order grpc core uses for the peer identity); () without a client certificate."""
    names = auth_context.get("x509_subject_alternative_name") or auth_context.get("x509_common_name") or ()
    return tuple(name.decode("utf-8", "replace") for name in names)


def http_identities(peercert: Mapping[str, Any] | None) -> tuple[str, ...]:
    """`grpc_identities` for a certificate as Python's ssl module decodes it."""
    if not peercert:
        return ()
    names = tuple(str(value) for _, value in peercert.get("subjectAltName", ()))
    if names:
        return names
    return tuple(str(value) for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName")


@dataclass(frozen=True, slots=True)
class IdentityGrant:
    """What one mTLS identity may ask: `permissions` (patterns) on `tenants` (None: all)."""

    identity: str
    permissions: PermissionSet
    tenants: frozenset[str] | None


def load_identities(path: str) -> dict[str, IdentityGrant]:
    """Read GATEHOUSE_CALLER_IDENTITIES_FILE:

        callers:
          - identity: spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway
            permissions: [gatehouse.access.check]
          - identity: billing.internal          # a DNS name, or the CN of a certificate without SANs
            permissions: [gatehouse.config.read, gatehouse.access.check]
            tenants: [0b6f2c1e-1d3a-4c55-9a57-2f0e4e0bb0a1]   # omitted: every tenant

    Raises SystemExit naming the file, the line and what is wrong."""
    try:
        root = yaml.compose(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"gatehouse: GATEHOUSE_CALLER_IDENTITIES_FILE {path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        raise SystemExit(f"gatehouse: GATEHOUSE_CALLER_IDENTITIES_FILE {path}: not YAML: {exc}") from None

    def refuse(node: yaml.Node | None, what: str) -> SystemExit:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        return SystemExit(f"gatehouse: GATEHOUSE_CALLER_IDENTITIES_FILE {path}{line}: {what}")

    def mapping(node: yaml.Node | None, what: str) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise refuse(node, f"{what} must be a mapping")
        found: dict[str, yaml.Node] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                raise refuse(key, f"{what}: keys must be plain words")
            if key.value in found:  # never its last value: a later line must not swap what a reader saw
                raise refuse(key, f"{what}: {key.value!r} is given twice")
            found[str(key.value)] = value
        return found

    def strings(node: yaml.Node, what: str) -> list[tuple[yaml.Node, str]]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise refuse(node, f"{what} must be a non-empty list")
        out: list[tuple[yaml.Node, str]] = []
        for item in node.value:
            if not isinstance(item, yaml.ScalarNode) or not item.value:
                raise refuse(item, f"each of {what} must be a non-empty string")
            out.append((item, str(item.value)))
        return out

    top = mapping(root, "the file")
    unknown = set(top) - {"callers"}
    if unknown or "callers" not in top:
        raise refuse(root, "want exactly one key, callers")
    entries = top["callers"]
    if not isinstance(entries, yaml.SequenceNode):
        raise refuse(entries, "callers must be a list")
    grants: dict[str, IdentityGrant] = {}
    for entry in entries.value:
        fields = mapping(entry, "each caller")
        unknown = set(fields) - {"identity", "permissions", "tenants"}
        if unknown:
            raise refuse(entry, f"unknown key {sorted(unknown)[0]!r} (identity, permissions, tenants)")
        identity_node = fields.get("identity")
        if not isinstance(identity_node, yaml.ScalarNode) or not identity_node.value:
            raise refuse(identity_node or entry, "identity must be a non-empty string")
        identity = str(identity_node.value)
        if identity in grants:
            raise refuse(identity_node, f"identity {identity!r} is listed twice")
        if "permissions" not in fields:
            raise refuse(entry, "permissions is required")
        patterns = []
        for node, pattern in strings(fields["permissions"], "permissions"):
            if not is_valid_pattern(pattern):
                raise refuse(node, f"{pattern!r} is no permission pattern")
            patterns.append(pattern)
        tenants = None
        if "tenants" in fields:
            tenants = set()
            for node, tenant_id in strings(fields["tenants"], "tenants"):
                if not is_valid_tenant_id(tenant_id):
                    raise refuse(node, f"{tenant_id!r} is no tenant id (a lower-case, hyphenated uuid)")
                tenants.add(tenant_id)
        grants[identity] = IdentityGrant(identity, PermissionSet(patterns), frozenset(tenants) if tenants else None)
    return grants


class Callers:
    """The one check of who may ask; see the module docstring. `required` False: every
    `require` returns at once (adapters skip even building Credentials)."""

    def __init__(
        self,
        authenticator: AdminAuthenticator,
        decisions: DecisionService,
        *,
        required: bool,
        identities: Mapping[str, IdentityGrant] | None = None,
    ) -> None:
        self.required = required
        self._keys = authenticator
        self._decisions = decisions
        self._identities = dict(identities or {})
        self.refused = 0  # calls refused for want of a credential, a permission or a tenant

    def admitted(self, context: grpc.aio.ServicerContext[Any, Any], permission: str) -> bool:
        """The usual case, without building Credentials or awaiting: True when the call's
        one `authorization` header is a key verified before that may ask `permission` about
        every tenant. False says nothing: ask `require_all`, which decides and explains."""
        found = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                if found or not isinstance(value, str):
                    return False
                found = value
        scheme, _, token = found.partition(" ")
        if scheme.lower() != "bearer":
            return False
        principal = self._keys.remembered(token.strip())
        return principal is not None and principal.is_operator and principal.permissions.matches(permission)

    async def require_grpc(
        self, context: grpc.aio.ServicerContext[Any, Any], permission: str, tenant_ids: Callable[[], Iterable[str]]
    ) -> None:
        """`admitted`, else `require_all` with the call's Credentials: what every gRPC hot
        method asks first."""
        if not self.admitted(context, permission):
            await self.require_all(Credentials.from_grpc(context), permission, tenant_ids)

    async def principal(self, credentials: Credentials) -> Principal | IdentityGrant:
        """Who presented `credentials`: a verified key's principal, or an identity's grant.
        Raises Unauthenticated, KeyRejected or Overloaded."""
        token = credentials.bearer
        if token:
            return self._keys.remembered(token) or await self._keys.verify(token, credentials.peer)
        for identity in credentials.identities:
            grant = self._identities.get(identity)
            if grant is not None:
                return grant
        if credentials.identities:
            raise Unauthenticated(
                "the client certificate's identity is not in GATEHOUSE_CALLER_IDENTITIES_FILE",
                metadata={"identity": credentials.identities[0][:256]},
            )
        raise Unauthenticated("a credential is required: authorization: Bearer <key>, or an mTLS client certificate")

    async def require(self, credentials: Credentials, permission: str, tenant_id: str, *, always: bool = False) -> None:
        """Returns when the caller may ask `permission` about `tenant_id`, or when callers
        are not required (and not `always`: a surface that needs a caller whatever the
        setting, as AuthZEN's does). Raises as the module docstring says."""
        await self.require_all(credentials, permission, lambda: (tenant_id,), always=always)

    async def require_all(
        self, credentials: Credentials, permission: str, tenant_ids: Callable[[], Iterable[str]], *, always: bool = False
    ) -> None:
        """`require` for every tenant of `tenant_ids()`, called only when the caller is
        limited to some tenants: a caller of every tenant is let through without it, so a
        remembered answer's request bytes are never parsed for this."""
        caller = await self.identify(credentials, always=always)
        if caller is not None:
            await self.require_caller(caller, permission, tenant_ids)

    async def identify(self, credentials: Credentials, *, always: bool = False) -> Principal | IdentityGrant | None:
        """Who presented `credentials` (None when callers are not required, and not
        `always`): the first half of `require_all`, which needs nothing of the request but
        its metadata or headers, so an adapter can refuse a stranger before it reads a
        request's body. Raises Unauthenticated, KeyRejected or Overloaded."""
        if not (self.required or always):
            return None
        try:
            return await self.principal(credentials)
        except (Unauthenticated, PermissionDenied):
            self.refused += 1
            raise

    async def require_caller(
        self, caller: Principal | IdentityGrant, permission: str, tenant_ids: Callable[[], Iterable[str]]
    ) -> None:
        """The second half of `require_all`, for a caller `identify` named: `permission`
        (its own patterns hold it, even when `tenant_ids()` names none) on every tenant of
        `tenant_ids()` (called only when the caller is limited to some)."""
        try:
            if self.covers_every_tenant(caller, permission):
                return
            if not caller.permissions.matches(permission):
                # Refused whether or not the request names a tenant: an ext_authz Check of a
                # public route names none, and its OK would let the request through.
                raise PermissionDenied("the caller may not ask this", metadata={"permission": permission})
            for tenant_id in tenant_ids():
                await self.require_of(caller, permission, tenant_id)
        except (Unauthenticated, PermissionDenied):
            self.refused += 1
            raise

    async def require_of(self, caller: Principal | IdentityGrant, permission: str, tenant_id: str) -> None:
        """`require` for a caller already known (a batch asks once per distinct tenant)."""
        if isinstance(caller, IdentityGrant):
            if not caller.permissions.matches(permission):
                raise PermissionDenied("the caller may not ask this", metadata={"permission": permission})
            if caller.tenants is not None and tenant_id not in caller.tenants:
                raise OtherTenant("the caller may not ask about this tenant", metadata={"tenant_id": tenant_id[:64]})
            return
        if caller.is_operator:
            # The bootstrap key holds only gatehouse.key.*: it never passes here.
            if not caller.permissions.matches(permission):
                raise PermissionDenied("the key does not permit this", metadata={"permission": permission})
            return
        if tenant_id != caller.tenant_id:
            raise OtherTenant("a tenant key asks only about its own tenant", metadata={"tenant_id": tenant_id[:64]})
        await require_key_grant(self._decisions, caller.key_id, tenant_id, permission)

    def require_subject_or_every_tenant(
        self, caller: Principal | IdentityGrant, permission: str, subject: SubjectRef
    ) -> None:
        """For an answer about `subject` across tenants (ListTenantsForSubject): the caller
        may ask `permission` about every tenant (an operator key, an mTLS identity without
        a tenant list), or is the subject itself. A subject's own credential is the key
        whose subject it is, `api_key/<key id>`; Gatehouse holds no credential of a user or
        a service, so for those only an operator may ask (the platform's own user service
        answers "my tenants" behind such a key). Raises PermissionDenied."""
        if self.covers_every_tenant(caller, permission):
            return
        if isinstance(caller, Principal) and caller.key_id and subject == key_subject(caller.key_id):
            return
        self.refused += 1
        raise PermissionDenied(
            "only an operator, or the subject's own key, may list its tenants", metadata={"permission": permission}
        )

    def covers_every_tenant(self, caller: Principal | IdentityGrant, permission: str) -> bool:
        """True when `caller` may ask `permission` about any tenant, so an adapter need not
        read the request's tenant first (the remembered-answer path stays unparsed)."""
        if isinstance(caller, IdentityGrant):
            return caller.tenants is None and caller.permissions.matches(permission)
        return caller.is_operator and caller.permissions.matches(permission)

    def stats(self) -> dict[str, float]:
        return {"refused": self.refused, "required": int(self.required)}


def caller_identities(settings: Settings) -> dict[str, IdentityGrant]:
    """Check the callers' settings and read GATEHOUSE_CALLER_IDENTITIES_FILE ({} when unset),
    before any connection opens. SystemExit naming the setting when
    GATEHOUSE_CALLER_CREDENTIALS is no mode, or identities are configured where no client
    certificate is ever verified."""
    mode = settings.caller_credentials
    if mode not in MODES:
        raise SystemExit(
            f"gatehouse: GATEHOUSE_CALLER_CREDENTIALS (--caller-credentials) must be one of {', '.join(MODES)}, "
            f"got {mode!r}"
        )
    if not settings.caller_identities_file:
        return {}
    if not settings.tls_client_ca_file:
        raise SystemExit(
            "gatehouse: GATEHOUSE_CALLER_IDENTITIES_FILE (--caller-identities-file) names mTLS identities, but "
            "GATEHOUSE_TLS_CLIENT_CA_FILE is not set: no client certificate would ever be verified"
        )
    return load_identities(settings.caller_identities_file)
