"""The state file: YAML documents of `apiVersion: gatehouse/v1`, read with every problem
named by file, line and field, and written back in the same form.

    apiVersion: gatehouse/v1
    kind: Plan
    name: pro
    features:
      reports: {default_enabled: true, gates: ["report.*"]}
    quotas: {seats: 50}
    rate_limits: {checks_per_second: 1000}
    ---
    apiVersion: gatehouse/v1
    kind: Tenant
    slug: acme                      # required; how apply finds the tenant
    id: 0b6f...                     # optional (export writes it); a tenant key needs it
    name: Acme Corp                 # required to create the tenant
    plan: pro
    region: eu-west-1
    status: active                  # draft | active | suspended | archived | deleted
    settings: {theme: dark}         # JSON values
    flag_overrides: {reports: false}
    quota_overrides: {seats: 100}
    roles:                          # custom roles; owner, admin, member, viewer are fixed
      - name: billing-admin
        permissions: ["invoice.*"]
        description: Runs billing
    members:
      - subject: user:alice         # type:id (or type/id, when the type holds a colon)
        roles:
          - role: owner             # at the tenant root
          - role: billing-admin
            scope: emea/de
          - role: viewer            # a grant may carry AssignRole's terms:
            scope: us
            condition: resource.attributes.owner == subject.id   # CEL, checked as AssignRole does
            expires_at: 2027-01-31T18:00:00Z                     # RFC 3339 with its zone

Unknown keys, duplicate keys, a second document for the same plan or tenant, and every
value the API would refuse are problems of the file, found before anything is written:
`load` raises `StateFileError` listing each as `file:line: Kind name: field: what`.
The rules for ids, slugs, scopes, permission patterns and conditions are the API's own
(gatehouse.engine.validate). A grant is identified by its role and scope: a member lists
each (role, scope) once, whatever its condition or expiry. An expiry is an RFC 3339 time
with its zone (`Z` or `+02:00`), to the microsecond at most (what the server keeps);
whether it is still ahead is decided when the file is applied (gatehouse.declarative.diff).
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

import yaml

from gatehouse.declarative.model import (
    API_VERSION,
    FeatureSpec,
    Grant,
    MemberSpec,
    PlanSpec,
    RoleSpec,
    State,
    RFC3339_RULE,
    TenantSpec,
    parse_instant,
    rfc3339,
    sorted_grants,
    subject_key,
    subject_text,
)
from gatehouse.engine.model import KEY_SUBJECT_TYPE, TenantStatus
from gatehouse.engine.patterns import is_valid_pattern
from gatehouse.engine.validate import (
    PATTERN_RULE,
    require_condition,
    require_id,
    require_name,
    require_scope,
    require_slug,
    require_tenant_id,
)
from gatehouse.errors import InvalidArgument

T = TypeVar("T")

KINDS = ("Plan", "Tenant")
INT64 = (-(2**63), 2**63 - 1)
EXACT_IN_SETTINGS = 2**53  # settings travel as protobuf Struct: every number a double
MAX_VALUE_DEPTH = 32  # as gatehouse.server.wire.MAX_VALUE_DEPTH: the server refuses deeper values
MAX_VALUES = 100_000  # settings values read per document, aliases counted each time they expand
MAX_DESCRIPTION = 1000
MAX_PATTERNS = 256  # as gatehouse.engine.validate.require_patterns


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the file: where (`file:line`), in what, which field, what."""

    where: str
    context: str
    field: str
    message: str
    line: int = 0

    def __str__(self) -> str:
        inside = f"{self.context}: " if self.context else ""
        name = f"{self.field}: " if self.field else ""
        return f"{self.where}: {inside}{name}{self.message}"


class StateFileError(ValueError):
    """The file cannot be applied; `problems` names every one found (file, line, field)."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: p.line)
        super().__init__("\n".join(str(p) for p in self.problems))


def load(path: str | Path) -> State:
    """The state in the file at `path`; StateFileError when it is not valid."""
    text = Path(path).read_text(encoding="utf-8")
    return loads(text, str(path))


def loads(text: str, filename: str = "<string>") -> State:
    """The state in `text` (named `filename` in errors); StateFileError when it is not valid."""
    try:
        documents = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise StateFileError([Problem(f"{filename}{line}", "", "", f"not YAML: {problem}")]) from None
    reader = _Reader(filename)
    plans: dict[str, PlanSpec] = {}
    tenants: dict[str, TenantSpec] = {}
    for number, node in enumerate(documents, start=1):
        if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"):
            continue
        reader.context = f"document {number}"
        read = reader.document(node)
        if isinstance(read, PlanSpec):
            if read.name in plans:
                reader.problem(node, "name", f"plan {read.name} is also defined at {plans[read.name].where}")
            else:
                plans[read.name] = read
        elif isinstance(read, TenantSpec):
            if read.slug in tenants:
                reader.problem(node, "slug", f"tenant {read.slug} is also defined at {tenants[read.slug].where}")
            else:
                tenants[read.slug] = read
    if reader.problems:
        raise StateFileError(reader.problems)
    return State(plans=plans, tenants=tenants)


class _Invalid(Exception):
    """A value already reported as a problem; the caller skips it."""


class _Reader:
    """Walks composed YAML nodes (which keep their line marks), collecting problems."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.context = ""
        self.problems: list[Problem] = []
        self._constructor = yaml.constructor.SafeConstructor()
        self._values = 0  # settings values read in this document (MAX_VALUES)

    # --- reporting ---

    def where(self, node: yaml.Node) -> str:
        return f"{self.filename}:{node.start_mark.line + 1}"

    def problem(self, node: yaml.Node, field: str, message: str) -> _Invalid:
        self.problems.append(Problem(self.where(node), self.context, field, message, node.start_mark.line))
        return _Invalid()

    def rule(self, rule: Callable[[str, Any], T], node: yaml.Node, field: str, value: Any) -> T:
        """`rule(field, value)` from gatehouse.engine.validate; its refusal becomes a problem."""
        try:
            return rule(field, value)
        except InvalidArgument as error:
            for violation in error.violations:
                self.problems.append(
                    Problem(self.where(node), self.context, violation.field, violation.description, node.start_mark.line)
                )
            raise _Invalid() from None

    # --- shapes ---

    def mapping(
        self, node: yaml.Node, field: str, *, known: Iterable[str] | None = None, required: Iterable[str] = ()
    ) -> dict[str, yaml.Node]:
        """The keys of a mapping node (strings), each once; keys outside `known` are problems."""
        if not isinstance(node, yaml.MappingNode):
            raise self.problem(node, field, "must be a mapping")
        out: dict[str, yaml.Node] = {}
        allowed = set(known) if known is not None else None
        for key_node, value_node in node.value:
            key = self.scalar(key_node)
            inner = f"{field}.{key}" if field else str(key)
            if not isinstance(key, str):
                self.problem(key_node, inner, "keys must be strings")
                continue
            if key in out:
                self.problem(key_node, inner, f"duplicate key (first at line {out[key].start_mark.line + 1})")
                continue
            if allowed is not None and key not in allowed:
                self.problem(key_node, inner, f"unknown field (known: {', '.join(sorted(allowed))})")
                continue
            out[key] = value_node
        for key in required:
            if key not in out:
                self.problem(node, f"{field}.{key}" if field else key, "is required")
        return out

    def sequence(self, node: yaml.Node, field: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.problem(node, field, "must be a list")
        return list(node.value)

    def scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return node  # not a scalar: every caller refuses a non-scalar where it wants one
        try:
            return self._constructor.construct_object(node)
        except yaml.YAMLError as error:  # a tag safe YAML has no type for (!!python/..., a `<<` merge key)
            raise self.problem(node, "", f"not a plain YAML value: {getattr(error, 'problem', None) or error}") from None

    def string(self, node: yaml.Node, field: str) -> str:
        value = self.scalar(node)
        if not isinstance(value, str):
            raise self.problem(node, field, "must be a string")
        return value

    def boolean(self, node: yaml.Node, field: str) -> bool:
        value = self.scalar(node)
        if not isinstance(value, bool):
            raise self.problem(node, field, "must be true or false")
        return value

    def integer(self, node: yaml.Node, field: str) -> int:
        value = self.scalar(node)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.problem(node, field, "must be an integer")
        if not INT64[0] <= value <= INT64[1]:
            raise self.problem(node, field, "must fit in 64 bits")
        return value

    def json(self, node: yaml.Node, field: str, depth: int = 1) -> Any:
        """A JSON value (settings): string, number, true/false, null, list or mapping; no
        dates (quote them); integers within +-2**53 (a Struct holds doubles: a larger one
        would come back rounded, and apply would never find it equal); nested at most
        MAX_VALUE_DEPTH levels, at most MAX_VALUES values per document counting each
        alias as often as it expands (an alias bomb, a recursive alias). (A null the live
        settings lack cannot be written: a merge-patch deletes with null; the diff says so.)"""
        self._values += 1
        if self._values > MAX_VALUES:
            if self._values == MAX_VALUES + 1:
                self.problem(node, field, f"settings hold more than {MAX_VALUES} values (aliases counted as expanded)")
            raise _Invalid()
        if depth > MAX_VALUE_DEPTH:
            raise self.problem(node, field, f"nests deeper than {MAX_VALUE_DEPTH} levels")
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            items = self.mapping(node, field).items() if isinstance(node, yaml.MappingNode) else enumerate(node.value)
            found: dict[Any, Any] = {}
            bad = False
            for key, value in items:
                try:
                    inner = f"{field}.{key}" if isinstance(key, str) else f"{field}[{key}]"
                    found[key] = self.json(value, inner, depth + 1)
                except _Invalid:
                    bad = True  # reported; go on to find the others
            if bad:
                raise _Invalid()
            return found if isinstance(node, yaml.MappingNode) else list(found.values())
        value = self.scalar(node)
        if isinstance(value, (datetime.date, datetime.datetime)):
            raise self.problem(node, field, "a date is not a JSON value: quote it")
        if isinstance(value, bytes):
            raise self.problem(node, field, "binary is not a JSON value")
        if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
            raise self.problem(node, field, "must be a finite number")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > EXACT_IN_SETTINGS:
            raise self.problem(node, field, "an integer beyond +-2**53 is not kept exactly (settings numbers are doubles): quote it")
        return value

    def keyed(
        self, node: yaml.Node, field: str, read: Callable[[yaml.Node, str], T]
    ) -> dict[str, T]:
        """A mapping of ids to values read by `read`; bad entries are reported and skipped."""
        out: dict[str, T] = {}
        for key, value_node in self.mapping(node, field).items():
            inner = f"{field}.{key}"
            try:
                self.rule(require_id, node, inner, key)
                out[key] = read(value_node, inner)
            except _Invalid:
                continue
        return out

    # --- documents ---

    def document(self, node: yaml.Node) -> PlanSpec | TenantSpec | None:
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, "", "must be a mapping with apiVersion and kind")
            return None
        self._values = 0
        # A first look, reporting nothing, to name the document in its problems.
        raw = {k.value: v for k, v in reversed(node.value) if isinstance(k, yaml.ScalarNode)}
        kind = raw["kind"].value if isinstance(raw.get("kind"), yaml.ScalarNode) else None
        label = raw.get("name" if kind == "Plan" else "slug")
        if kind in KINDS and isinstance(label, yaml.ScalarNode):
            self.context = f"{kind} {label.value}"
        try:
            if "apiVersion" not in raw or "kind" not in raw:
                raise self.problem(node, "apiVersion" if "apiVersion" not in raw else "kind", "is required")
            version = self.scalar(raw["apiVersion"])
            if version != API_VERSION:
                raise self.problem(raw["apiVersion"], "apiVersion", f"must be {API_VERSION} (got {version!r})")
            if kind not in KINDS:
                raise self.problem(raw["kind"], "kind", f"must be one of {', '.join(KINDS)} (got {kind!r})")
            return self.plan(node) if kind == "Plan" else self.tenant(node)
        except _Invalid:
            return None

    def plan(self, node: yaml.Node) -> PlanSpec | None:
        fields = self.mapping(
            node, "", known=("apiVersion", "kind", "name", "features", "quotas", "rate_limits"), required=("name",)
        )
        before = len(self.problems)
        name = self._field(fields, "name", lambda n, f: self.rule(require_id, n, f, self.string(n, f)), "")
        features: dict[str, FeatureSpec] = self._field(fields, "features", lambda n, f: self.keyed(n, f, self.feature), {})
        quotas: dict[str, int] = self._field(fields, "quotas", lambda n, f: self.keyed(n, f, self.integer), {})
        rate_limits: dict[str, int] = self._field(fields, "rate_limits", lambda n, f: self.keyed(n, f, self.integer), {})
        if len(self.problems) > before:
            return None
        return PlanSpec(name, features, quotas, rate_limits, where=self.where(node))

    def feature(self, node: yaml.Node, field: str) -> FeatureSpec:
        fields = self.mapping(node, field, known=("default_enabled", "gates"))
        enabled = self.boolean(fields["default_enabled"], f"{field}.default_enabled") if "default_enabled" in fields else False
        gates: tuple[str, ...] = ()
        if "gates" in fields:
            gates = self.patterns(fields["gates"], f"{field}.gates")
        return FeatureSpec(enabled, gates)

    def patterns(self, node: yaml.Node, field: str) -> tuple[str, ...]:
        items = self.sequence(node, field)
        values = [self.string(item, f"{field}[{i}]") for i, item in enumerate(items)]
        for i, (item, value) in enumerate(zip(items, values)):
            if not is_valid_pattern(value):
                raise self.problem(item, f"{field}[{i}]", PATTERN_RULE)
        if len(values) > MAX_PATTERNS:
            raise self.problem(node, field, f"at most {MAX_PATTERNS} patterns")
        if len(set(values)) != len(values):
            raise self.problem(node, field, "lists a pattern twice")
        return tuple(sorted(values))  # order carries no meaning; one spelling compares equal

    def tenant(self, node: yaml.Node) -> TenantSpec | None:
        known = (
            "apiVersion", "kind", "slug", "id", "name", "plan", "region", "status", "settings",
            "flag_overrides", "quota_overrides", "roles", "members",
        )  # fmt: skip
        fields = self.mapping(node, "", known=known, required=("slug",))
        before = len(self.problems)
        text = self.string
        slug = self._field(fields, "slug", lambda n, f: self.rule(require_slug, n, f, text(n, f)), "")
        tenant_id = self._field(fields, "id", lambda n, f: self.rule(require_tenant_id, n, f, text(n, f)), None)
        name = self._field(fields, "name", lambda n, f: self.rule(require_name, n, f, text(n, f)), None)
        plan = self._field(fields, "plan", lambda n, f: self.rule(require_id, n, f, text(n, f)), None)
        region = self._field(fields, "region", lambda n, f: self.optional_id(n, f), None)
        status = self._field(fields, "status", self.status, None)
        settings = self._field(fields, "settings", self.settings, None)
        flags: dict[str, bool] | None = self._field(fields, "flag_overrides", lambda n, f: self.keyed(n, f, self.boolean), None)
        quotas: dict[str, int] | None = self._field(fields, "quota_overrides", lambda n, f: self.keyed(n, f, self.integer), None)
        roles: dict[str, RoleSpec] | None = self._field(fields, "roles", self.roles, None)
        members: dict[str, MemberSpec] | None = self._field(fields, "members", self.members, None)
        if len(self.problems) > before:
            return None
        return TenantSpec(
            slug=slug, name=name, id=tenant_id, plan=plan, region=region, status=status, settings=settings,
            flag_overrides=flags, quota_overrides=quotas, roles=roles, members=members, where=self.where(node),
        )  # fmt: skip

    def optional_id(self, node: yaml.Node, field: str) -> str:
        value = self.string(node, field)
        return self.rule(require_id, node, field, value) if value else ""

    def status(self, node: yaml.Node, field: str) -> TenantStatus:
        value = self.scalar(node)
        names = [s.value for s in TenantStatus]
        if value not in names:
            raise self.problem(node, field, f"must be one of {', '.join(names)}")
        return TenantStatus(value)

    def settings(self, node: yaml.Node, field: str) -> dict[str, Any]:
        if not isinstance(node, yaml.MappingNode):
            raise self.problem(node, field, "must be a mapping")
        value: dict[str, Any] = self.json(node, field)
        return value

    def roles(self, node: yaml.Node, field: str) -> dict[str, RoleSpec]:
        out: dict[str, RoleSpec] = {}
        for i, item in enumerate(self.sequence(node, field)):
            inner = f"{field}[{i}]"
            try:
                fields = self.mapping(item, inner, known=("name", "permissions", "description"), required=("name", "permissions"))
                if "name" not in fields or "permissions" not in fields:
                    continue
                name = self.rule(require_id, fields["name"], f"{inner}.name", self.string(fields["name"], f"{inner}.name"))
                permissions = self.patterns(fields["permissions"], f"{inner}.permissions")
                description = None
                if "description" in fields:
                    description = self.string(fields["description"], f"{inner}.description")
                    if len(description) > MAX_DESCRIPTION or not description.isprintable():
                        raise self.problem(fields["description"], f"{inner}.description", "must be at most 1000 printable characters")
                if name in out:
                    raise self.problem(item, f"{inner}.name", f"role {name} is also defined at {out[name].where}")
                out[name] = RoleSpec(name, permissions, description, where=self.where(item))
            except _Invalid:
                continue
        return out

    def members(self, node: yaml.Node, field: str) -> dict[str, MemberSpec]:
        out: dict[str, MemberSpec] = {}
        for i, item in enumerate(self.sequence(node, field)):
            inner = f"{field}[{i}]"
            try:
                fields = self.mapping(item, inner, known=("subject", "roles"), required=("subject",))
                if "subject" not in fields:
                    continue
                subject = self.subject(fields["subject"], f"{inner}.subject")
                grants: dict[tuple[str, str], Grant] = {}
                bad = False
                for j, grant_node in enumerate(self.sequence(fields["roles"], f"{inner}.roles") if "roles" in fields else []):
                    try:
                        grant = self.grant(grant_node, f"{inner}.roles[{j}]")
                    except _Invalid:
                        bad = True  # reported; go on to find the others
                        continue
                    if grant.key in grants:
                        raise self.problem(grant_node, f"{inner}.roles[{j}]", "lists this role at this scope twice")
                    grants[grant.key] = grant
                if bad:
                    continue
                if subject in out:
                    raise self.problem(
                        item, f"{inner}.subject", f"{subject_text(subject)} is also listed at {out[subject].where}"
                    )
                out[subject] = MemberSpec(subject, frozenset(grants.values()), where=self.where(item))
            except _Invalid:
                continue
        return out

    def subject(self, node: yaml.Node, field: str) -> str:
        value = self.string(node, field)
        separator = "/" if "/" in value else ":"
        type_, found, id_ = value.partition(separator)
        if not found:
            raise self.problem(node, field, "must be type:id, e.g. user:alice")
        self.rule(require_id, node, f"{field} (type)", type_)
        self.rule(require_id, node, f"{field} (id)", id_)
        if type_ == KEY_SUBJECT_TYPE:
            raise self.problem(node, field, "API keys are not members in the file: manage them with `gatehouse key`")
        return subject_key(type_, id_)

    def grant(self, node: yaml.Node, field: str) -> Grant:
        fields = self.mapping(node, field, known=("role", "scope", "condition", "expires_at"), required=("role",))
        before = len(self.problems)
        role = self._field(fields, "role", lambda n, f: self.rule(require_id, n, f"{field}.{f}", self.string(n, f"{field}.{f}")), "")
        scope = self._field(fields, "scope", lambda n, f: self.rule(require_scope, n, f"{field}.{f}", self.string(n, f"{field}.{f}")), "")
        condition = self._field(
            fields, "condition", lambda n, f: self.rule(require_condition, n, f"{field}.{f}", self.string(n, f"{field}.{f}")), ""
        )
        expires_at = self._field(fields, "expires_at", lambda n, f: self.instant(n, f"{field}.{f}"), None)
        if len(self.problems) > before or "role" not in fields:
            raise _Invalid()
        return Grant(role, scope, condition, expires_at, where=self.where(node))

    def instant(self, node: yaml.Node, field: str) -> datetime.datetime:
        """An RFC 3339 time with its zone, quoted or not (YAML would read an unquoted one
        as a timestamp, and one without a zone as local time: the text is read here
        instead), as an aware datetime in UTC to the microsecond."""
        if not isinstance(node, yaml.ScalarNode):
            raise self.problem(node, field, RFC3339_RULE)
        try:
            return parse_instant(str(node.value))
        except ValueError as error:
            raise self.problem(node, field, str(error)) from None

    def _field(self, fields: Mapping[str, yaml.Node], key: str, read: Callable[[yaml.Node, str], T], default: T) -> T:
        if key not in fields:
            return default
        try:
            return read(fields[key], key)
        except _Invalid:
            return default


# --- writing ---


def dumps(state: State) -> str:
    """`state` as the file `loads` reads: plans first, then tenants, each sorted by name;
    unmanaged (None) fields left out."""
    documents: list[dict[str, Any]] = []
    for plan in sorted(state.plans.values(), key=lambda p: p.name):
        doc: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "Plan", "name": plan.name}
        if plan.features:
            doc["features"] = {
                name: {"default_enabled": f.default_enabled, **({"gates": list(f.gates)} if f.gates else {})}
                for name, f in sorted(plan.features.items())
            }
        if plan.quotas:
            doc["quotas"] = dict(sorted(plan.quotas.items()))
        if plan.rate_limits:
            doc["rate_limits"] = dict(sorted(plan.rate_limits.items()))
        documents.append(doc)
    for tenant in sorted(state.tenants.values(), key=lambda t: t.slug):
        documents.append(_tenant_document(tenant))
    return yaml.dump_all(documents, Dumper=_FileDumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


class _FileDumper(yaml.SafeDumper):
    """SafeDumper whose strings read back as they were written."""


def _represent_text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    # PyYAML writes a string with an unprintable character in a plain, single-quoted or
    # block scalar as it is, where a reader folds U+0085 (NEL, a YAML line break) into a
    # space: `context.ok == "\x85"` would come back `context.ok == " "`, another
    # condition. Double-quoted, every such character is written as an escape.
    if all(c.isprintable() or c == "\n" for c in text):
        return dumper.represent_str(text)
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style='"')


_FileDumper.add_representer(str, _represent_text)


def _tenant_document(tenant: TenantSpec) -> dict[str, Any]:
    doc: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "Tenant", "slug": tenant.slug}
    optional = {
        "id": tenant.id,
        "name": tenant.name,
        "plan": tenant.plan,
        "region": tenant.region,
        "status": tenant.status.value if tenant.status is not None else None,
    }
    doc.update({key: value for key, value in optional.items() if value is not None})
    if tenant.settings is not None:
        doc["settings"] = plain(tenant.settings)
    if tenant.flag_overrides:
        doc["flag_overrides"] = dict(sorted(tenant.flag_overrides.items()))
    if tenant.quota_overrides:
        doc["quota_overrides"] = dict(sorted(tenant.quota_overrides.items()))
    if tenant.roles:
        doc["roles"] = [
            {"name": r.name, "permissions": list(r.permissions), **({"description": r.description} if r.description else {})}
            for r in sorted(tenant.roles.values(), key=lambda r: r.name)
        ]
    if tenant.members:
        doc["members"] = [
            {"subject": subject_text(m.subject), **({"roles": [_grant(g) for g in sorted_grants(m.grants)]} if m.grants else {})}
            for m in sorted(tenant.members.values(), key=lambda m: m.subject)
        ]
    return doc


def _grant(grant: Grant) -> dict[str, str]:
    """A grant as the file writes it: `role`, then what it has of scope, condition, expiry."""
    out = {"role": grant.role}
    if grant.scope:
        out["scope"] = grant.scope
    if grant.condition:
        out["condition"] = grant.condition
    if grant.expires_at is not None:
        out["expires_at"] = rfc3339(grant.expires_at)
    return out


def plain(value: Any) -> Any:
    """Settings as YAML writes them back: whole floats (protobuf's Struct holds only
    doubles) as ints, so `3` stays `3` through a round trip; keys sorted, so an export is
    the same text however the server ordered them."""
    if isinstance(value, Mapping):
        return {key: plain(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value
