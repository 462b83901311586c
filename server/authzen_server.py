"""The AuthZEN HTTP listener: aiohttp in the sidecar's own process and event loop.

    POST /access/v1/evaluation          one Decision             (server/authzen.py)
    POST /access/v1/evaluations         {"evaluations": [...]}
    GET  /.well-known/authzen-configuration   the PDP metadata document

Off unless GATEHOUSE_AUTHZEN_LISTEN names host:port. Secured as the gRPC listener is
(server/listeners.py, the same rule and the same files): TLS, or mutual TLS with
GATEHOUSE_TLS_CLIENT_CA_FILE, when GATEHOUSE_TLS_CERT_FILE is set; else plaintext on a
loopback address only, unless GATEHOUSE_ALLOW_PLAINTEXT=1. With `serve --workers N`
every worker binds the port with SO_REUSEPORT, as for gRPC (server/workers.py).

What every request meets, in order (`_guard`, one middleware, then the handler):

1. `X-Request-ID` echoed on the response, whatever it is ("If the PEP specified a
   request identifier in the request, the PDP MUST include the same identifier in the
   response", AuthZEN 1.0 "Request Identification"); it also names the call in log lines.
2. The evaluation endpoints only: the hot class's admission bound, shared with
   AccessService (server/admission.py: at the bound, 429 with Retry-After at once), and
   the call's deadline, GATEHOUSE_DEFAULT_DEADLINE_SECONDS, for everything it waits on
   (504 past it; the Postgres statement is cancelled).
3. The body: `Content-Type: application/json` ("Requests MUST include a Content-Type
   header with the value application/json"), at most `MAX_BODY_BYTES` (413 past it, the
   rest never read), UTF-8 JSON (I-JSON, RFC 7493: no duplicate member names, no NaN or
   Infinity; nesting bounded by the parser), a top-level object.
4. The evaluation endpoints always need a caller, whatever GATEHOUSE_CALLER_CREDENTIALS
   says (server/callers.py, `always=True`; the same check as CheckAccess's when that is
   `required`): `Authorization: Bearer <API key>`, or on an mTLS listener the client
   certificate's identity (GATEHOUSE_CALLER_IDENTITIES_FILE), holding
   `gatehouse.access.check`. 401 (with `WWW-Authenticate: Bearer`) without a usable one,
   403 when it lacks the permission or any tenant the request asks about (every distinct
   tenant of a batch is checked before anything is decided). AuthZEN 1.0 leaves the
   mechanism open but says "the PDP SHOULD authenticate the calling PEP" ("Policy
   Confidentiality and Sender Authentication"). The metadata document is public.
5. Any error leaves through `server.errors.http_error`, the one table from the error
   hierarchy to HTTP statuses, with a JSON body; so do aiohttp's own (404 unknown path,
   405 wrong method). A client's input never makes a 500.

Counted in the stats registry as `authzen.requests{endpoint=...,status=...}` (endpoint:
evaluation, evaluations, configuration, other), and with GATEHOUSE_ACCESS_LOG_HOT=1 one
access line per request on the `gatehouse.access` logger, like the gRPC hot methods.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import Any, Awaitable, Callable

from aiohttp import web

from gatehouse import deadlines, logs
from gatehouse.errors import InvalidArgument, RequestTooLarge
from gatehouse.server.admission import Gate
from gatehouse.server.authzen import (
    EVALUATION_PATH,
    EVALUATIONS_PATH,
    METADATA_PATH,
    TENANT_HEADER,
    AuthZen,
    Evaluations,
    Question,
    parse_evaluation,
    parse_evaluations,
)
from gatehouse.server.call_log import access_log
from gatehouse.server.callers import CHECK, Callers, Credentials
from gatehouse.server.errors import http_error
from gatehouse.server.listeners import HttpListener

log = logging.getLogger("gatehouse")

MAX_BODY_BYTES = 1024 * 1024
# Idle keep-alive connections are closed after this many seconds (aiohttp's default is an hour).
KEEPALIVE_SECONDS = 75.0

ENDPOINTS = {EVALUATION_PATH: "evaluation", EVALUATIONS_PATH: "evaluations", METADATA_PATH: "configuration"}
JSON_TYPE = "application/json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AuthZenServer:
    """The listener and its application; `start` binds, `stop` drains."""

    def __init__(
        self,
        authzen: AuthZen,
        listener: HttpListener,
        *,
        hot_gate: Gate | None,
        deadline_seconds: float | None,
        callers: Callers,
        base_url: str = "",
        access_log_on: bool = False,
        reuse_port: bool = False,
    ) -> None:
        self._authzen = authzen
        self._callers = callers  # who may ask (server/callers.py): always someone
        self._listener = listener
        self._gate = hot_gate
        self._deadline = deadline_seconds
        self._base_url = base_url.rstrip("/")
        self._access_log = access_log_on
        self._reuse_port = reuse_port
        self.requests: Counter[tuple[str, int]] = Counter()
        self.address = ""  # "host:port" once started
        self.url = ""  # "http(s)://host:port" once started
        self._runner: web.AppRunner | None = None

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY_BYTES)
        app.router.add_post(EVALUATION_PATH, self._evaluation)
        app.router.add_post(EVALUATIONS_PATH, self._evaluations)
        app.router.add_get(METADATA_PATH, self._configuration)
        return app

    async def start(self, grace_seconds: float) -> None:
        runner = web.AppRunner(
            self.application(),
            access_log=None,  # our own line, when on (see the module)
            handle_signals=False,  # the sidecar's serve() owns SIGTERM and SIGINT
            shutdown_timeout=grace_seconds,
            keepalive_timeout=KEEPALIVE_SECONDS,
            # A compressed body would be inflated past MAX_BODY_BYTES before it is counted:
            # take bytes as sent (gzip is then no JSON: 400).
            auto_decompress=False,
        )
        await runner.setup()
        listener = self._listener
        site = web.TCPSite(
            runner,
            listener.host,
            listener.port,
            ssl_context=listener.ssl_context,
            reuse_port=self._reuse_port or None,
        )
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise SystemExit(
                f"gatehouse: cannot listen on {listener.host}:{listener.port} for AuthZEN: {exc.strerror or exc}"
                " (is another server there?)"
            ) from None
        self._runner = runner
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        self.address = f"{shown}:{port}"
        self.url = f"{'https' if listener.ssl_context is not None else 'http'}://{self.address}"

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (up to the grace), close."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def values(self) -> dict[str, float]:
        """For the stats registry: `requests{endpoint=...,status=...}`."""
        return {f"requests{{endpoint={e},status={s}}}": n for (e, s), n in self.requests.items()}

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        endpoint = ENDPOINTS.get(request.path, "other")
        request_id = request.headers.get("X-Request-ID")
        headers = request.headers
        scope = logs.CallScope(
            f"authzen {request.method} {request.path}" if endpoint == "other" else f"/authzen/{endpoint}",
            lambda: [(key.lower(), value) for key, value in headers.items() if key.lower() in ("x-request-id", "traceparent")],
        )
        token = logs.enter_call(scope)
        try:
            try:
                response = await self._admitted(request, handler, endpoint)
            except web.HTTPException as exc:
                # aiohttp's own refusals (404, 405): its status, our JSON body.
                response = _json(exc.status, {"error": {"status": exc.status, "message": exc.reason}})
                for key in ("Allow",):
                    if key in exc.headers:
                        response.headers[key] = exc.headers[key]
            except Exception as exc:  # every other error, through the one table
                status, body, extra = http_error(exc)
                response = _json(status, body)
                response.headers.update(extra)
            if request_id is not None:
                response.headers["X-Request-ID"] = request_id
            self.requests[(endpoint, response.status)] += 1
            if self._access_log and access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "%s %d", scope.method, response.status,
                    extra={
                        "method": scope.method,
                        "code": str(response.status),
                        "duration_ms": round((time.perf_counter() - started) * 1000.0, 3),
                        "peer": request.remote or "",
                    },
                )
            return response
        finally:
            logs.leave_call(token)

    async def _admitted(self, request: web.Request, handler: Handler, endpoint: str) -> web.StreamResponse:
        """The evaluation endpoints inside the hot class's bound and the call's deadline."""
        if endpoint not in ("evaluation", "evaluations") or request.method != "POST":
            return await handler(request)
        gate = self._gate
        if gate is not None:
            gate.enter()  # Overloaded at the bound: 429
        try:
            with deadlines.bounded(self._deadline):
                async with deadlines.within():
                    return await handler(request)
        finally:
            if gate is not None:
                gate.leave()

    async def _evaluation(self, request: web.Request) -> web.Response:
        raw = await _read_body(request)
        header_tenant = request.headers.get(TENANT_HEADER)
        parsed: list[Question] = []

        def tenants() -> tuple[str, ...]:
            parsed.append(parse_evaluation(_decode(raw), header_tenant))
            return (parsed[0].tenant_id,)

        await self._require(request, tenants)
        question = parsed[0] if parsed else parse_evaluation(_decode(raw), header_tenant)
        return _json(200, await self._authzen.evaluation(question))

    async def _evaluations(self, request: web.Request) -> web.Response:
        raw = await _read_body(request)
        header_tenant = request.headers.get(TENANT_HEADER)
        parsed: list[Evaluations] = []

        def tenants() -> tuple[str, ...]:
            parsed.append(parse_evaluations(_decode(raw), header_tenant))
            return tuple(dict.fromkeys(q.tenant_id for q in parsed[0].questions))

        await self._require(request, tenants)
        evaluations = parsed[0] if parsed else parse_evaluations(_decode(raw), header_tenant)
        return _json(200, await self._authzen.evaluations(evaluations))

    async def _require(self, request: web.Request, tenants: Callable[[], tuple[str, ...]]) -> None:
        """The caller may ask CHECK about every tenant of the request (see the module, step
        4). The caller is authenticated first; the body is parsed for its tenants only
        when the caller is limited to some (else parsed once, afterwards)."""
        transport = request.transport
        peercert = transport.get_extra_info("peercert") if transport is not None else None
        credentials = Credentials.from_http(request.headers.getall("Authorization", []), peercert, _peer(request))
        await self._callers.require_all(credentials, CHECK, tenants, always=True)

    async def _configuration(self, request: web.Request) -> web.Response:
        """The PDP metadata (AuthZEN 1.0 "Policy Decision Point Metadata"):
        `policy_decision_point` (REQUIRED; "MUST be identical to the Policy Decision Point
        identifier value into which the well-known URI string was inserted"),
        `access_evaluation_endpoint` (REQUIRED), `access_evaluations_endpoint`. The search
        endpoints are not served, so not named ("the absence of any of these parameters is
        sufficient for the PEP to determine that the PDP is not capable").

        The identifier is GATEHOUSE_AUTHZEN_BASE_URL when set (what a PEP behind a proxy or
        a name should see), else this request's scheme and Host (the listener's address
        when the Host header is absent or no host[:port])."""
        base = self._base_url or f"{request.scheme}://{_host(request) or self.address}"
        document = {
            "policy_decision_point": base,
            "access_evaluation_endpoint": base + EVALUATION_PATH,
            "access_evaluations_endpoint": base + EVALUATIONS_PATH,
        }
        response = _json(200, document)
        # "Implementations should utilize HTTP caching directives such as Cache-Control".
        response.headers["Cache-Control"] = "max-age=300"
        if not self._base_url:
            response.headers["Vary"] = "Host"
        return response


def _host(request: web.Request) -> str:
    host = request.headers.get("Host", "")
    if not host or len(host) > 255 or not all(c.isalnum() or c in ".-:[]" for c in host):
        return ""
    return host


async def _read_body(request: web.Request) -> bytes:
    """The request body, as sent (see the module, step 3). Raises InvalidArgument (not
    JSON by its Content-Type) or RequestTooLarge."""
    if request.content_type != JSON_TYPE:
        raise InvalidArgument("Content-Type", f"must be {JSON_TYPE}")
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise RequestTooLarge(MAX_BODY_BYTES)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise RequestTooLarge(MAX_BODY_BYTES) from None


def _decode(raw: bytes) -> Any:
    """`raw` as JSON (I-JSON: see the module, step 3). Raises InvalidArgument."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument("request", "must be UTF-8 (RFC 8259 section 8.1)") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_members, parse_constant=_no_constant)
    except _Duplicate as duplicate:
        raise InvalidArgument("request", f"member {str(duplicate)[:64]!r} appears twice in one object") from None
    except RecursionError:
        raise InvalidArgument("request", "JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, an integer of over 4300 digits
        raise InvalidArgument("request", f"not valid JSON: {str(exc)[:120]}") from None


def _peer(request: web.Request) -> str:
    """The client as grpc names a peer (`ipv4:127.0.0.1:5555`, `ipv6:[::1]:5555`), the
    key of the failed-authentication budget (server/admin_auth.peer_address)."""
    transport = request.transport
    name = transport.get_extra_info("peername") if transport is not None else None
    if not isinstance(name, tuple) or len(name) < 2:
        return "unix:"
    host, port = str(name[0]), name[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


class _Duplicate(Exception):
    pass


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # I-JSON (RFC 7493 section 2.3), as AuthZEN 1.0 "JSON Payload Considerations" asks:
    # member names are unique; two `tenant_id`s must not be read as whichever came last.
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, text=json.dumps(body, separators=(",", ":")), content_type=JSON_TYPE)
