"""Conditions on role assignments: CEL expressions, compiled once, evaluated without I/O.

A role assignment may carry a condition (issue 18): it grants only when the condition,
evaluated for the request, is true. A condition sees

    subject.type, subject.id              string   who is asking (the request's subject)
    subject.attributes                    map      what the caller says of the subject
    resource.type, resource.id            string   the request's resource
    resource.scope                        string
    resource.attributes                   map      what the caller says of the resource
    context                               map      anything else the caller passes
    request.time                          timestamp when the question was asked

e.g. `resource.attributes.owner == subject.id`, `context.ip.startsWith("10.")`,
`request.time < timestamp("2027-01-01T00:00:00Z")`. The maps come from the request's
`google.protobuf.Struct`s, so their numbers are doubles (CEL compares them with ints).

**The library.** `cel-expr-python`, the Python binding of Google's own C++ CEL runtime
(cel-cpp, the conformance-tested implementation next to cel-go). Compared on this
machine (README "Conditions"): it type-checks against declared variables (an unknown
variable, `1 + "a"`, an unknown function are refused at write time with line and
column), and evaluates `resource.attributes.owner == subject.id` with a fresh activation
at ~220,000/s. `common-expression-language` (Rust, cel-interpreter) has no type
checker (those three compile and fail only when evaluated) and needs its own context
object per call to be fast (52,000/s from a dict); `cel-python` (celpy, pure Python)
evaluates at ~5,700/s and has no checker either. Only cel-cpp gives write-time checks.

**Bounded.** A condition is at most MAX_CONDITION_LENGTH characters, so its tree is
small; a comprehension (`all`, `exists`, `map`, `filter`) may not hold another, in its
body or its range (a chain `.map(x, x + x).map(x, x + x)...` doubles its value at each
link: 28 links asked for gigabytes), so the work is at most (tree size) x (values in the
request's attributes and context), which the server bounds (`MAX_ATTRIBUTE_VALUES`, and
`MAX_ATTRIBUTE_BYTES` for what one step may copy: a hostile pairing of condition and
request builds a few megabytes at most). There are no loops but comprehensions in CEL
and no functions with I/O in this environment; regular expressions are RE2 (linear),
but cel-cpp compiles a `matches` pattern afresh on every call (a constant one too), and
compiling a counted repetition costs its count: `"[a-z]{1000}"` five times took ~1.7 ms a
call, 0.5 s inside a 300-item comprehension, 19 s with the pattern from the request. So
`matches` takes a constant pattern of at most MAX_PATTERN_LENGTH characters, with no
counted repetition above MAX_PATTERN_REPEAT, and never inside a comprehension. And a
comprehension's range and body hold at most MAX_LOOP_ADDITIONS `+` together: a range of
40 concatenated attribute lists, each item summed with itself 130 times, took 0.45 s and
600 MB for one check while within every other bound.

**Missing attributes.** The attributes a condition reads are found once, at compile time,
from the checked expression (`resource.attributes.owner`, `resource.attributes["owner"]`;
`has(...)` tests are not reads). When evaluation fails and some of those were not in the
request, the answer is `Missing(names)`: the decision says CONDITIONAL and lists them,
never a silent allow or deny. CEL's `&&` and `||` absorb an error when the other side
decides (`false && x`, `true || x`), so a condition that does not need what is missing
still answers. Any other evaluation error (a type mismatch, a division by zero) makes
the condition not hold: `Failed(message)`, never an exception out of the engine.
"""

from __future__ import annotations

import datetime
import functools
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from cel_expr_python import cel  # type: ignore[import-untyped]  # ships a cel.pyi but no py.typed marker

MAX_CONDITION_LENGTH = 1024  # characters of CEL source
MAX_ATTRIBUTE_VALUES = 256  # values (at any depth) in one request's attributes and context together
MAX_ATTRIBUTE_BYTES = 16_384  # their encoded size together: a comprehension may copy them per item
ATTRIBUTE_MAPS = ("subject.attributes", "resource.attributes", "context")
MAX_PATTERN_LENGTH = 128  # characters of a `matches` pattern
MAX_LOOP_ADDITIONS = 8  # `+` (sums, concatenations) inside comprehensions, ranges included
MAX_PATTERN_REPEAT = 64  # the largest count in a pattern's {n}, {n,} or {n,m}
_COUNTED = re.compile(r"\{(\d+)(?:,(\d*))?\}")
TIME = "request.time"

_T = cel.Type
_ENV = cel.NewEnv(
    variables={
        "subject.type": _T.STRING,
        "subject.id": _T.STRING,
        "subject.attributes": _T.Map(_T.STRING, _T.DYN),
        "resource.type": _T.STRING,
        "resource.id": _T.STRING,
        "resource.scope": _T.STRING,
        "resource.attributes": _T.Map(_T.STRING, _T.DYN),
        "context": _T.Map(_T.STRING, _T.DYN),
        TIME: _T.TIMESTAMP,
    }
)
_POSITION = re.compile(r"<input>:(\d+):(\d+): (.*)")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


class ConditionError(ValueError):
    """A condition that cannot be used: why, and where (1-based line and column; 0 when
    the error concerns the whole expression)."""

    def __init__(self, message: str, line: int = 0, column: int = 0) -> None:
        super().__init__(message)
        self.message, self.line, self.column = message, line, column

    def __str__(self) -> str:
        return f"{self.message} (line {self.line}, column {self.column})" if self.line else self.message


@dataclass(frozen=True, slots=True)
class ConditionInput:
    """What a condition may read of one request, as plain values (JSON-like maps)."""

    subject_type: str
    subject_id: str
    resource_type: str = ""
    resource_id: str = ""
    resource_scope: str = ""
    subject_attributes: Mapping[str, Any] | None = None
    resource_attributes: Mapping[str, Any] | None = None
    context: Mapping[str, Any] | None = None


# What evaluating a condition can give: True, False, or one of these.
@dataclass(frozen=True, slots=True)
class Missing:
    """The condition needs attributes the request did not carry (full names, sorted)."""

    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Failed:
    """The condition could not be evaluated (a type mismatch, ...): it does not hold."""

    message: str


Outcome = bool | Missing | Failed


class Condition:
    """One compiled condition. Built once per distinct source (`compile_condition`), when
    an assignment is loaded, and shared by every grant that carries it."""

    __slots__ = ("source", "reads", "reads_time", "_program", "_error", "_uses")

    def __init__(
        self,
        source: str,
        program: Any,
        reads: tuple[str, ...],
        reads_time: bool,
        error: str = "",
        uses: frozenset[str] = frozenset(),
    ) -> None:
        self.source = source
        self.reads = reads  # attribute names it reads, e.g. ("resource.attributes.owner",)
        self.reads_time = reads_time  # reads request.time: its answer can change by itself
        self._program = program
        self._error = error  # set when the stored source does not compile (never holds)
        # The variables it names: only those are handed to each evaluation.
        self._uses = uses

    def evaluate(self, facts: ConditionInput, now: float) -> Outcome:
        """True or False; Missing when it needs what the request did not carry; Failed on
        any other error. Never raises."""
        if self._program is None:
            return Failed(self._error)
        try:
            data = {name: _VALUES[name](facts, now) for name in self._uses}
            result = self._program.eval(data=data)
            value = result.value() if result.type() == _T.BOOL else None
        except Exception as exc:  # a value the runtime cannot take: the condition does not hold
            return Failed(f"{type(exc).__name__}: {exc}")
        if isinstance(value, bool):
            return value
        missing = tuple(name for name in self.reads if not _present(facts, name))
        if missing:
            return Missing(missing)
        return Failed(str(result.value()) if result.type() == _T.ERROR else f"not a bool: {result.type().name()}")

    def __repr__(self) -> str:
        return f"Condition({self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Condition) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)


# Each variable's value for one evaluation, by name.
_VALUES: dict[str, Callable[[ConditionInput, float], Any]] = {
    "subject.type": lambda f, now: f.subject_type,
    "subject.id": lambda f, now: f.subject_id,
    "subject.attributes": lambda f, now: f.subject_attributes or {},
    "resource.type": lambda f, now: f.resource_type,
    "resource.id": lambda f, now: f.resource_id,
    "resource.scope": lambda f, now: f.resource_scope,
    "resource.attributes": lambda f, now: f.resource_attributes or {},
    "context": lambda f, now: f.context or {},
    TIME: lambda f, now: _EPOCH + datetime.timedelta(seconds=now),
}


def _present(facts: ConditionInput, name: str) -> bool:
    root, _, key = name.rpartition(".")
    if root == "context":
        values = facts.context
    elif root == "subject.attributes":
        values = facts.subject_attributes
    else:
        values = facts.resource_attributes
    return values is not None and key in values


def check_condition(source: str) -> Condition:
    """Compile `source` for storing it: ConditionError (with line and column) when it does
    not parse, does not type-check, is not a bool, is too long or nests comprehensions."""
    if len(source) > MAX_CONDITION_LENGTH:
        raise ConditionError(f"at most {MAX_CONDITION_LENGTH} characters")
    if "\x00" in source:
        raise ConditionError("must not contain NUL (U+0000)")
    hidden = next((c for c in source if not c.isprintable() and c not in "\n\t\r"), None)
    if hidden is not None:
        # What a reviewer reads must be what runs: a bidi override or a zero-width
        # character makes source display otherwise ("Trojan Source", CVE-2021-42574), and
        # an escape sequence rewrites a terminal. A CEL string literal spells any of them
        # with an escape (`"\u202e"`) instead.
        raise ConditionError(
            f"must not contain U+{ord(hidden):04X} (a control, format or separator character); "
            "write it as an escape in a string literal"
        )
    try:
        program = _ENV.compile(source)
    except Exception as exc:
        raise _compile_error(str(exc)) from None
    kind = program.return_type()
    if kind != _T.BOOL and kind != _T.DYN:
        raise ConditionError(f"must be a bool expression, not {kind.name()}", 1, 1)
    try:
        reads, uses, nesting, refused = _analyse(program.serialize())
    except (ValueError, IndexError) as exc:  # a tree this reader does not know: refuse, never guess
        raise ConditionError(f"cannot be analysed: {exc}") from None
    if nesting > 1:
        raise ConditionError(
            "a comprehension (all, exists, exists_one, map, filter) may not hold another, nor run over another's result"
        )
    if refused:
        raise ConditionError(refused[0])
    return Condition(source, program, reads, TIME in uses, uses=uses)


@functools.lru_cache(maxsize=4096)
def compile_condition(source: str) -> Condition:
    """The compiled condition for a stored `source`, once per distinct source per process.
    One that no longer compiles (stored by hand, or by another version) never holds."""
    try:
        return check_condition(source)
    except ConditionError as error:
        return Condition(source, None, (), False, error=f"the stored condition does not compile: {error}")


def _compile_error(text: str) -> ConditionError:
    """cel-cpp's message, e.g. `INVALID_ARGUMENT: ERROR: <input>:1:29: Syntax error: ...`,
    as one line with its position."""
    found = _POSITION.search(text)
    if found is None:
        return ConditionError(text.splitlines()[0] if text else "does not compile")
    return ConditionError(found.group(3).strip(), int(found.group(1)), int(found.group(2)))


# --- reading the checked expression --------------------------------------------------------
#
# `Expression.serialize()` gives a google.protobuf.Any holding a cel.expr.CheckedExpr. The
# engine may not import protobuf, and the binding exposes no tree, so the few fields needed
# are read off the wire format here (cel/expr/syntax.proto, field numbers stable since
# google.api.expr.v1alpha1). The checker has already folded qualified names into single
# identifiers (`resource.attributes` is one Ident).

_EXPR = 4  # CheckedExpr.expr; Any.value is field 2
_IDENT, _SELECT, _CALL, _LIST, _STRUCT, _COMPREHENSION, _CONST = 4, 5, 6, 7, 8, 9, 3


def _analyse(serialized: bytes) -> tuple[tuple[str, ...], frozenset[str], int, list[str]]:
    """(attribute names read, the condition variables named, deepest comprehension
    nesting, why a `matches` call is refused: none when all are allowed)."""
    any_value = _one(serialized, 2)
    expr = _one(any_value, _EXPR)
    reads: set[str] = set()
    uses: set[str] = set()
    refused: list[str] = []
    loop_additions = 0

    def walk(node: bytes, nesting: int, in_loop: bool = False) -> int:
        nonlocal loop_additions
        deepest = nesting
        for number, value in _fields(node):
            if not isinstance(value, bytes):
                continue
            if number == _IDENT:
                name = _string(value, 1)
                if name in _VALUES:  # not a comprehension's own variable
                    uses.add(name)
            elif number == _SELECT:
                operand, field, test_only = _one(value, 1), _string(value, 2), _int(value, 3)
                root = _ident(operand)
                if root in ATTRIBUTE_MAPS and not test_only:
                    reads.add(f"{root}.{field}")
                deepest = max(deepest, walk(operand, nesting, in_loop))
            elif number == _CALL:
                args = [v for n, v in _fields(value) if n == 3 and isinstance(v, bytes)]
                if _string(value, 2) == "_+_" and in_loop:
                    loop_additions += 1
                if _string(value, 2) == "matches" and args:
                    refused.extend(_pattern_problems(_constant_string(args[-1]), nesting))
                if _string(value, 2) == "_[_]" and len(args) == 2:
                    root, key = _ident(args[0]), _constant_string(args[1])
                    if root in ATTRIBUTE_MAPS and key is not None:
                        reads.add(f"{root}.{key}")
                for n, v in _fields(value):
                    if n in (1, 3) and isinstance(v, bytes):
                        deepest = max(deepest, walk(v, nesting, in_loop))
            elif number == _LIST:
                for n, v in _fields(value):
                    if n == 1 and isinstance(v, bytes):
                        deepest = max(deepest, walk(v, nesting, in_loop))
            elif number == _STRUCT:
                for n, entry in _fields(value):
                    if n == 2 and isinstance(entry, bytes):
                        for m, v in _fields(entry):
                            if m in (3, 4) and isinstance(v, bytes):
                                deepest = max(deepest, walk(v, nesting, in_loop))
            elif number == _COMPREHENSION:
                for n, v in _fields(value):
                    if n in (2, 4, 5, 6, 7) and isinstance(v, bytes):
                        # The initial accumulator runs once; the rest per item. The range
                        # runs once too, but counts as nested: a comprehension over another's
                        # result (`.map(x, x + x).map(x, x + x)...`) doubles at each link.
                        # Range (2) and body (5, 6, 7): their `+` are counted (a range's
                        # concatenations set how many items the body runs for).
                        deepest = max(deepest, walk(v, nesting if n == 4 else nesting + 1, in_loop or n != 4))
                deepest = max(deepest, nesting + 1)
        return deepest

    nesting = walk(expr, 0)
    if loop_additions > MAX_LOOP_ADDITIONS:
        refused.append(f"at most {MAX_LOOP_ADDITIONS} + (sums, concatenations) inside comprehensions and their ranges")
    return tuple(sorted(reads)), frozenset(uses), nesting, refused


def _pattern_problems(pattern: str | None, nesting: int) -> list[str]:
    """Why a `matches` call with this pattern (None: not a constant string) at this
    comprehension depth is refused (see the module docstring, Bounded)."""
    if nesting > 0:
        return ["matches may not be called inside a comprehension (all, exists, exists_one, map, filter)"]
    if pattern is None:
        return ["matches needs a constant pattern (a string literal), not one computed or from the request"]
    if len(pattern) > MAX_PATTERN_LENGTH:
        return [f"a matches pattern has at most {MAX_PATTERN_LENGTH} characters"]
    counts = [int(n) for found in _COUNTED.finditer(pattern) for n in found.groups() if n]
    if counts and max(counts) > MAX_PATTERN_REPEAT:
        return [f"a matches pattern repeats at most {MAX_PATTERN_REPEAT} times ({{n}}, {{n,m}})"]
    return []


def _ident(expr: bytes) -> str | None:
    ident = _maybe_one(expr, _IDENT)
    return _string(ident, 1) if ident is not None else None


def _constant_string(expr: bytes) -> str | None:
    constant = _maybe_one(expr, _CONST)
    if constant is None:
        return None
    value = _maybe_one(constant, 6)  # Constant.string_value
    return value.decode("utf-8") if value is not None else None


def _varint(data: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: bytes) -> list[tuple[int, bytes | int]]:
    out: list[tuple[int, bytes | int]] = []
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
            out.append((number, value))
        elif wire == 2:
            length, i = _varint(data, i)
            if i + length > len(data):
                raise ValueError("truncated field")
            out.append((number, data[i : i + length]))
            i += length
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"wire type {wire}")
    return out


def _maybe_one(data: bytes, number: int) -> bytes | None:
    for n, value in _fields(data):
        if n == number and isinstance(value, bytes):
            return value
    return None


def _one(data: bytes, number: int) -> bytes:
    value = _maybe_one(data, number)
    if value is None:
        raise ValueError(f"field {number} absent")
    return value


def _string(data: bytes, number: int) -> str:
    value = _maybe_one(data, number)
    return value.decode("utf-8") if value is not None else ""


def _int(data: bytes, number: int) -> int:
    for n, value in _fields(data):
        if n == number and isinstance(value, int):
            return value
    return 0


ConditionFacts = Callable[[], ConditionInput]
