"""The ext_authz route mapping: which check an HTTP request that Envoy describes stands for.

Read once, at start, from the YAML file GATEHOUSE_EXT_AUTHZ_CONFIG names (README "Envoy
ext_authz"; the example is deploy/envoy/gatehouse-routes.yaml):

    jwt_payload_in_metadata: jwt_payload   # jwt_authn's payload_in_metadata (default jwt_payload)
    remove_headers: [authorization]        # taken off an allowed request before it goes upstream
    defaults:                              # what a route does not say itself
      tenant: {header: x-tenant-id}
      subject: {type: user, id: {claim: sub}}
      scope: {header: x-gatehouse-scope}   # absent: "" (the tenant root)
      attributes:                          # what conditions read (optional)
        subject: {department: {claim: dept}}
        context: {client: {header: x-client-id}}
    routes:                                # in order; the first that matches decides
      - path: /healthz                     # exact path
        action: skip
      - prefix: /public/                   # string prefix, as Envoy's route `prefix`
        methods: [GET, HEAD]
        action: allow
      - template: /v1/tenants/{tenant}/invoices/{id}
        methods: [GET]
        permission: invoice.read
        tenant: {param: tenant}
        attributes:                        # replaces the defaults' attributes, whole
          resource: {owner: {header: x-invoice-owner}, id: {param: id}}

A route matches on the request's path without its query string: `path` exactly,
`prefix` as a string prefix (Envoy's meaning: `/api` also matches `/apis`), `template`
segment by segment, where `{name}` and `*` match one non-empty segment and a final `**`
any rest (Envoy's `uri_template` syntax, for these forms); `methods` (default: any)
limits it to those. A request no route matches is denied; so is one whose path is not
in normal form (`not_normalized`: dot segments, plain or encoded, and empty ones),
before any route is tried.

Actions: `check` (the default) asks the decision service for `permission`; `allow`
answers OK without a decision (public routes; `remove_headers` still apply); `skip`
answers OK and changes nothing but the `x-gatehouse-*` headers (health probes; to skip
the Check call altogether, disable the filter on that route in Envoy); `deny` answers 403.

A value (tenant, subject type and id, scope) is read from one source, or from the first
present of a list of them (a header sent empty counts as absent; a claim the token
carries empty or in another shape than a string or an integer is an error, never skipped): `{header: name}` (Envoy lower-cases header names),
`{param: name}` (a `{name}` of the route's template), `{claim: name}` or
`{claim: [a, b]}` (a claim, or a nested one, of the JWT payload Envoy's jwt_authn filter
put into metadata), `{value: literal}`; `subject.type` may be a plain string.

`attributes` feed the conditions of role assignments (engine/conditions.py): under
`subject`, `resource` and `context`, each name (1-128 of `[A-Za-z0-9._:@-]`) is read
from its sources as above, a string, and becomes `subject.attributes.<name>`,
`resource.attributes.<name>` or `context.<name>`; a name none of whose sources is
present is not given (a condition needing it answers CONDITIONAL, a denial). A route's
own `attributes` replace the defaults' whole. What is read meets CheckAccess's rules
for attributes (server/access.py `facts_violations`: at most 16 KiB in all, no NUL);
at most MAX_ATTRIBUTE_VALUES names per route.

`load` raises `RouteFileError`, whose message names the file and the line, for anything
it cannot use: YAML syntax, an unknown or duplicate key, a bad permission or literal
(the rules of gatehouse.engine.validate), a `{param}` its route's template lacks, a
`check` route with no tenant or subject.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gatehouse.engine.conditions import MAX_ATTRIBUTE_VALUES
from gatehouse.engine.patterns import is_valid_id
from gatehouse.engine.validate import require_id, require_permission, require_scope, require_tenant_id
from gatehouse.errors import InvalidArgument

JWT_AUTHN = "envoy.filters.http.jwt_authn"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})


class RouteFileError(Exception):
    """The mapping file cannot be used; the message names the file, line and key."""


class Action(enum.Enum):
    CHECK = "check"
    ALLOW = "allow"
    SKIP = "skip"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Request:
    """What a source reads: the request's headers (lower-case names), the route's
    template parameters and the JWT claims (None: no payload in the metadata)."""

    headers: Mapping[str, str]
    params: Mapping[str, str]
    claims: Any  # the JWT payload, a google.protobuf.Struct (`in`, `[]`); None: no payload


@dataclass(frozen=True, slots=True)
class Source:
    """One place a value comes from: kind header, param, claim or value."""

    kind: str
    name: str  # header name, param name or literal; a claim's path is `path`
    path: tuple[str, ...] = ()

    def read(self, request: Request) -> str | None:
        if self.kind == "header":
            return request.headers.get(self.name)
        if self.kind == "param":
            return request.params.get(self.name)
        if self.kind == "value":
            return self.name
        return _claim(request.claims, self.path)

    def describe(self) -> str:
        """For errors and denials: `header x-tenant-id`, `claim org.id`."""
        return f"{self.kind} {'.'.join(self.path) if self.kind == 'claim' else self.name}"


def _claim(claims: Any, path: tuple[str, ...]) -> str | None:
    """The claim at `path` as a string; None when the token does not carry it. A claim
    the token carries in a shape no value can be read from (an empty string, a list, a
    boolean, an object, null, a fraction, or a path through a non-object) raises
    InvalidArgument naming it: the identity provider said something, so it is not taken
    as silence and the next source (a header the client sets) is never asked instead."""
    value: Any = claims
    for depth, key in enumerate(path):
        if isinstance(value, (str, int, float, bool)) or value is None or not hasattr(value, "__contains__"):
            if depth == 0:
                return None
            raise InvalidArgument(f"claim {'.'.join(path)}", UNUSABLE_CLAIM)
        if key not in value:
            return None
        value = value[key]
    if isinstance(value, str) and value:
        return value
    if isinstance(value, float) and value.is_integer():  # a JSON number read from a Struct
        return str(int(value))
    raise InvalidArgument(f"claim {'.'.join(path)}", UNUSABLE_CLAIM)


UNUSABLE_CLAIM = "present in the token but not a non-empty string or an integer"


@dataclass(frozen=True, slots=True)
class Value:
    """A value read from the first of its sources that is present and not empty (a
    header sent empty counts as absent; a claim present in an unusable shape is an
    error, see `_claim`)."""

    sources: tuple[Source, ...]

    def read(self, request: Request) -> str | None:
        """The first non-empty value of the sources; None when none has one. Raises
        InvalidArgument for a claim the token carries in an unusable shape."""
        for source in self.sources:
            found = source.read(request)
            if found:
                return found
        return None

    def describe(self) -> str:
        return " or ".join(source.describe() for source in self.sources)


ATTRIBUTE_KINDS = ("subject", "resource", "context")


@dataclass(frozen=True, slots=True)
class Attribute:
    """One attribute a route reads: `kind` (subject, resource or context), its name, and
    where its value comes from."""

    kind: str
    name: str
    value: Value

    @property
    def field(self) -> str:
        """Its name as a condition reads it: `resource.attributes.owner`, `context.ip`."""
        return f"{self.kind}.attributes.{self.name}" if self.kind != "context" else f"context.{self.name}"


@dataclass(frozen=True, slots=True)
class Route:
    line: int  # in the file, for logs
    label: str  # "GET /v1/invoices/{id}", for the decision metadata
    methods: frozenset[str] | None  # None: any
    exact: str | None = None
    prefix: str | None = None
    segments: tuple[str, ...] | None = None  # a template, split at "/"
    action: Action = Action.CHECK
    permission: str = ""
    tenant: Value | None = None
    subject_type: Value | None = None
    subject_id: Value | None = None
    scope: Value | None = None
    attributes: tuple[Attribute, ...] = ()

    def match(self, method: str, path: str) -> dict[str, str] | None:
        """The template's parameters when this route matches (`{}` for exact or prefix
        routes), else None. `path` is without its query string."""
        if self.methods is not None and method not in self.methods:
            return None
        if self.exact is not None:
            return {} if path == self.exact else None
        if self.prefix is not None:
            return {} if path.startswith(self.prefix) else None
        assert self.segments is not None
        parts = path.split("/")
        template = self.segments
        rest = template[-1] == "**"
        if rest:
            template = template[:-1]
            if len(parts) < len(template):
                return None
        elif len(parts) != len(template):
            return None
        params: dict[str, str] = {}
        for want, got in zip(template, parts):
            if want.startswith("{"):
                if not got:
                    return None
                params[want[1:-1]] = got
            elif want == "*":
                if not got:
                    return None
            elif want != got:
                return None
        return params


@dataclass(frozen=True, slots=True)
class RouteMap:
    routes: tuple[Route, ...]
    remove_headers: tuple[str, ...] = ()
    jwt_payload_in_metadata: str = "jwt_payload"
    source: str = ""  # the file it was read from

    def route(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        """The first route matching `method` and `path` (query string and fragment
        ignored) with its template parameters; None when none does."""
        path = path_only(path)
        for route in self.routes:
            params = route.match(method, path)
            if params is not None:
                return route, params
        return None


def path_only(path: str) -> str:
    """`path` without its query string and fragment."""
    cut = len(path)
    for mark in ("?", "#"):
        at = path.find(mark)
        if at != -1 and at < cut:
            cut = at
    return path[:cut]


_SLASHES = re.compile(r"%2f|%5c|\\", re.IGNORECASE)  # what some server reads as a /
_DOTS = re.compile(r"%2e", re.IGNORECASE)  # what some server reads as a .


def not_normalized(path: str) -> str | None:
    """Why `path` (query string and fragment ignored) is not in the normal form routes are
    matched on, or None when it is. The service behind Envoy may resolve what is left:
    `/public/../internal/x` is `/internal/x` to it, so a route matching it as written
    would decide about another request than the one served (a path confusion; Envoy's
    "Configuring Envoy as an edge proxy" asks for normalize_path, merge_slashes and
    path_with_escaped_slashes_action for the same reason). Refused, read the way the most
    lenient server reads it: a `.` or `..` segment, once `%2e` is read as `.` and `%2f`,
    `%5c` and `\\` as `/`; or an empty segment but the last (`//`, which a server
    merging slashes drops). An encoded slash within a segment is no problem in itself."""
    path = path_only(path)
    if "%" in path or "\\" in path:
        path = _DOTS.sub(".", _SLASHES.sub("/", path))
    segments = path.split("/")
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment in (".", ".."):
            return "a . or .. segment (RFC 3986 section 3.3), plain or percent-encoded"
        if not segment and 0 < index < last:
            return "an empty segment (//)"
    return None


def _never_matches(kind: str, pattern: str) -> str | None:
    """Why no request can match a route's `pattern` (None: one can): a request's path is
    matched without its query string, and only once `not_normalized` lets it through.
    (A prefix may end inside a segment: `/a/.` still matches `/a/.well-known`.)"""
    if not pattern.isprintable():
        return "a control character"
    if "?" in pattern or "#" in pattern:
        return "a query string or fragment (a route matches the path alone)"
    problem = not_normalized(pattern + "x" if kind == "prefix" else pattern)
    if problem is not None:
        return f"a path holding {problem}, which is refused before any route is tried"
    return None


def from_settings(path: str) -> RouteMap | None:
    """The mapping GATEHOUSE_EXT_AUTHZ_CONFIG names (None: none, no ext_authz service);
    SystemExit with the file's problem, so a bad file stops the server before it serves."""
    if not path:
        return None
    try:
        return load(path)
    except RouteFileError as error:
        raise SystemExit(f"gatehouse: GATEHOUSE_EXT_AUTHZ_CONFIG (--ext-authz-config): {error}") from None


def load(path: str) -> RouteMap:
    """The mapping in the file at `path`. Raises RouteFileError (see module)."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as error:
        raise RouteFileError(f"{path}: cannot read: {error}") from None
    return parse(text, path)


def parse(text: str, name: str = "<mapping>") -> RouteMap:
    """The mapping written in `text` (`name` is the file, for messages)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise RouteFileError(f"{name}{line}: not valid YAML: {error.problem or error}") from None
    except yaml.YAMLError as error:
        raise RouteFileError(f"{name}: not valid YAML: {error}") from None
    return _Reader(name).mapping_file(root)


@dataclass
class _Reader:
    """Walks the composed YAML nodes, so every error names the line of its node."""

    name: str

    def fail(self, node: Node, where: str, problem: str) -> RouteFileError:
        return RouteFileError(f"{self.name} line {node.start_mark.line + 1}: {where}: {problem}")

    def mapping(self, node: Node, where: str, keys: Sequence[str]) -> dict[str, Node]:
        if not isinstance(node, MappingNode):
            raise self.fail(node, where, "must be a mapping")
        found: dict[str, Node] = {}
        for key, value in node.value:
            if not isinstance(key, ScalarNode):
                raise self.fail(key, where, "keys must be plain words")
            if key.value not in keys:
                raise self.fail(key, f"{where}.{key.value}" if where else key.value, f"unknown key; expected one of {', '.join(keys)}")
            if key.value in found:
                raise self.fail(key, f"{where}.{key.value}" if where else key.value, "given twice")
            found[key.value] = value
        return found

    def scalar(self, node: Node, where: str) -> str:
        if not isinstance(node, ScalarNode) or node.tag == "tag:yaml.org,2002:null":
            raise self.fail(node, where, "must be a single value")
        return str(node.value)

    def strings(self, node: Node, where: str) -> list[tuple[Node, str]]:
        if not isinstance(node, SequenceNode):
            raise self.fail(node, where, "must be a list")
        return [(item, self.scalar(item, f"{where}[{index}]")) for index, item in enumerate(node.value)]

    def rule(self, node: Node, where: str, check: Callable[[str, str], str], value: str) -> str:
        try:
            return check(where, value)
        except InvalidArgument as error:
            raise self.fail(node, where, error.violations[0].description) from None

    def mapping_file(self, root: Node | None) -> RouteMap:
        if root is None:
            raise RouteFileError(f"{self.name}: empty; it needs at least `routes`")
        top = self.mapping(root, "", ("jwt_payload_in_metadata", "remove_headers", "defaults", "routes"))
        payload = "jwt_payload"
        if "jwt_payload_in_metadata" in top:
            payload = self.scalar(top["jwt_payload_in_metadata"], "jwt_payload_in_metadata")
        remove = tuple(
            self.header_name(item, f"remove_headers[{index}]", value)
            for index, (item, value) in enumerate(self.strings(top["remove_headers"], "remove_headers"))
        ) if "remove_headers" in top else ()
        defaults = _Defaults()
        if "defaults" in top:
            given = self.mapping(top["defaults"], "defaults", ("tenant", "subject", "scope", "attributes"))
            defaults = self.values(given, "defaults", None)
        if "routes" not in top:
            raise self.fail(root, "routes", "is required (a list of routes)")
        node = top["routes"]
        if not isinstance(node, SequenceNode) or not node.value:
            raise self.fail(node, "routes", "must be a non-empty list")
        routes = tuple(self.route(item, f"routes[{index}]", defaults) for index, item in enumerate(node.value))
        return RouteMap(routes, remove, payload, self.name)

    def header_name(self, node: Node, where: str, value: str) -> str:
        if not value or any(c.isspace() or c == ":" for c in value) or not value.isprintable():
            raise self.fail(node, where, "must be an HTTP header name")
        return value.lower()

    def values(self, given: dict[str, Node], where: str, params: frozenset[str] | None) -> "_Defaults":
        out = _Defaults()
        if "tenant" in given:
            out.tenant = self.value(given["tenant"], f"{where}.tenant", params, require_tenant_id)
        if "scope" in given:
            out.scope = self.value(given["scope"], f"{where}.scope", params, require_scope)
        if "subject" in given:
            subject = self.mapping(given["subject"], f"{where}.subject", ("type", "id"))
            for key in ("type", "id"):
                if key not in subject:
                    raise self.fail(given["subject"], f"{where}.subject.{key}", "is required")
            out.subject_type = self.value(subject["type"], f"{where}.subject.type", params, require_id, plain=True)
            out.subject_id = self.value(subject["id"], f"{where}.subject.id", params, require_id)
        if "attributes" in given:
            out.attributes = self.attributes(given["attributes"], f"{where}.attributes", params)
        return out

    def attributes(self, node: Node, where: str, params: frozenset[str] | None) -> tuple[Attribute, ...]:
        found: list[Attribute] = []
        kinds = self.mapping(node, where, ATTRIBUTE_KINDS)
        for kind in ATTRIBUTE_KINDS:
            if kind not in kinds:
                continue
            names = kinds[kind]
            if not isinstance(names, MappingNode):
                raise self.fail(names, f"{where}.{kind}", "must be a mapping of names to sources")
            for key, spec in names.value:
                name = self.scalar(key, f"{where}.{kind}")
                at = f"{where}.{kind}.{name}"
                self.rule(key, at, require_id, name)
                if any(a.kind == kind and a.name == name for a in found):
                    raise self.fail(key, at, "given twice")
                found.append(Attribute(kind, name, self.value(spec, at, params, _any_value)))
        if len(found) > MAX_ATTRIBUTE_VALUES:
            raise self.fail(node, where, f"at most {MAX_ATTRIBUTE_VALUES} attributes")
        return tuple(found)

    def value(
        self,
        node: Node,
        where: str,
        params: frozenset[str] | None,
        check: Callable[[str, str], str],
        *,
        plain: bool = False,
    ) -> Value:
        """`{header|param|claim|value: ...}`, or a list of them; `plain`: a bare string is a value.
        `params`: the route's template parameters (None: defaults, checked per route)."""
        if plain and isinstance(node, ScalarNode):
            return Value((Source("value", self.rule(node, where, check, self.scalar(node, where))),))
        items = node.value if isinstance(node, SequenceNode) else [node]
        if not items:
            raise self.fail(node, where, "must name at least one source")
        sources = []
        for index, item in enumerate(items):
            at = f"{where}[{index}]" if isinstance(node, SequenceNode) else where
            spec = self.mapping(item, at, ("header", "param", "claim", "value"))
            if len(spec) != 1:
                raise self.fail(item, at, "must name exactly one of header, param, claim, value")
            (kind, arg), = spec.items()
            if kind == "claim" and isinstance(arg, SequenceNode):
                path = tuple(value for _, value in self.strings(arg, f"{at}.claim"))
                if not path:
                    raise self.fail(arg, f"{at}.claim", "must name a claim")
                sources.append(Source("claim", ".".join(path), path))
                continue
            text = self.scalar(arg, f"{at}.{kind}")
            if kind == "header":
                sources.append(Source("header", self.header_name(arg, f"{at}.header", text)))
            elif kind == "param":
                if params is not None and text not in params:
                    raise self.fail(arg, f"{at}.param", f"the route's template has no {{{text}}}")
                sources.append(Source("param", text))
            elif kind == "claim":
                sources.append(Source("claim", text, (text,)))
            else:
                sources.append(Source("value", self.rule(arg, f"{at}.value", check, text)))
        return Value(tuple(sources))

    def route(self, node: Node, where: str, defaults: "_Defaults") -> Route:
        keys = ("path", "prefix", "template", "methods", "action", "permission", "tenant", "subject", "scope", "attributes")
        given = self.mapping(node, where, keys)
        matchers = [key for key in ("path", "prefix", "template") if key in given]
        if len(matchers) != 1:
            raise self.fail(node, where, "needs exactly one of path, prefix, template")
        kind = matchers[0]
        pattern_node = given[kind]
        pattern = self.scalar(pattern_node, f"{where}.{kind}")
        if not pattern.startswith("/"):
            raise self.fail(pattern_node, f"{where}.{kind}", "must start with /")
        problem = _never_matches(kind, pattern)
        if problem is not None:
            raise self.fail(pattern_node, f"{where}.{kind}", f"never matches: {problem}")
        segments: tuple[str, ...] | None = None
        params: frozenset[str] = frozenset()
        if kind == "template":
            segments = tuple(pattern.split("/"))
            params = self.template_params(pattern_node, f"{where}.template", segments)
        methods: frozenset[str] | None = None
        if "methods" in given:
            names = []
            for item, value in self.strings(given["methods"], f"{where}.methods"):
                if value.upper() not in METHODS:
                    raise self.fail(item, f"{where}.methods", f"{value!r} is no HTTP method")
                names.append(value.upper())
            if not names:
                raise self.fail(given["methods"], f"{where}.methods", "must not be empty (leave it out for any method)")
            methods = frozenset(names)
        action = Action.CHECK
        if "action" in given:
            text = self.scalar(given["action"], f"{where}.action")
            try:
                action = Action(text)
            except ValueError:
                raise self.fail(given["action"], f"{where}.action", "must be check, allow, skip or deny") from None
        label = f"{'|'.join(sorted(methods)) if methods else '*'} {pattern}{' (prefix)' if kind == 'prefix' else ''}"
        if action is not Action.CHECK:
            for key in ("permission", "tenant", "subject", "scope", "attributes"):
                if key in given:
                    raise self.fail(given[key], f"{where}.{key}", f"means nothing with action {action.value}")
            return Route(node.start_mark.line + 1, label, methods, *self.matcher(kind, pattern, segments), action=action)
        if "permission" not in given:
            raise self.fail(node, f"{where}.permission", "is required (or an action: allow, skip, deny)")
        permission = self.rule(
            given["permission"], f"{where}.permission", require_permission, self.scalar(given["permission"], f"{where}.permission")
        )
        own = self.values(given, where, params)
        tenant = own.tenant or defaults.tenant
        subject_type = own.subject_type or defaults.subject_type
        subject_id = own.subject_id or defaults.subject_id
        scope = own.scope or defaults.scope
        attributes = own.attributes if "attributes" in given else defaults.attributes
        if tenant is None:
            raise self.fail(node, f"{where}.tenant", "is required here or in defaults")
        if subject_type is None or subject_id is None:
            raise self.fail(node, f"{where}.subject", "is required here or in defaults")
        read: tuple[tuple[Value | None, str], ...] = (
            (tenant, "tenant"), (subject_type, "subject.type"), (subject_id, "subject.id"), (scope, "scope"),
            *((a.value, f"attributes.{a.kind}.{a.name}") for a in attributes),
        )
        for read_value, what in read:
            for source in read_value.sources if read_value is not None else ():
                if source.kind == "param" and source.name not in params:
                    raise self.fail(
                        node, f"{where}.{what}", f"reads {{{source.name}}} (from defaults), which this route's {kind} lacks"
                    )
        return Route(
            node.start_mark.line + 1, label, methods, *self.matcher(kind, pattern, segments), action=action,
            permission=permission, tenant=tenant, subject_type=subject_type, subject_id=subject_id, scope=scope,
            attributes=attributes,
        )

    @staticmethod
    def matcher(kind: str, pattern: str, segments: tuple[str, ...] | None) -> tuple[str | None, str | None, tuple[str, ...] | None]:
        return (pattern if kind == "path" else None, pattern if kind == "prefix" else None, segments)

    def template_params(self, node: Node, where: str, segments: tuple[str, ...]) -> frozenset[str]:
        names: list[str] = []
        for index, segment in enumerate(segments[1:], start=1):
            if segment == "**":
                if index != len(segments) - 1:
                    raise self.fail(node, where, "** may only be the last segment")
            elif segment.startswith("{") or segment.endswith("}"):
                name = segment[1:-1]
                if not (segment.startswith("{") and segment.endswith("}")) or not is_valid_id(name) or "=" in name:
                    raise self.fail(node, where, f"{segment!r}: a parameter is a whole segment, {{name}}")
                if name in names:
                    raise self.fail(node, where, f"{{{name}}} appears twice")
                names.append(name)
            elif "{" in segment or "}" in segment or "*" in segment and segment != "*":
                raise self.fail(node, where, f"{segment!r}: a parameter or wildcard is a whole segment")
        return frozenset(names)


@dataclass
class _Defaults:
    tenant: Value | None = None
    subject_type: Value | None = None
    subject_id: Value | None = None
    scope: Value | None = None
    attributes: tuple[Attribute, ...] = ()


def _any_value(field: str, value: str) -> str:
    """An attribute's literal: any string (checked with what is read, at each request)."""
    return value
