"""Search filters: the operator set Mem0 and LangGraph users write, checked
once (a bad filter is a 400 that names the problem) and compiled to a tree the
search evaluates on each candidate record. Pure.

A filter is a JSON object. Keys are dotted paths into the record
(`agent_id`, `kind`, `tags`, `namespace`, `id`, `created_at`, `updated_at`,
`version`, `content[.<path>]`, `metadata[.<path>]`) or the logical operators
`$and` (a list), `$or` (a list), `$not` (an object); sibling keys all hold.
A path's value is either a plain JSON value (equality; for `tags`, "has this
tag") or an object of operators that must all hold:

    $eq $ne        JSON equality (true is not 1); `tags`: has / has not the tag
    $gt $gte       both numbers, or both strings (lexical); else false
    $lt $lte
    $in $nin       equal to one (none) of a list; `tags`: has one (none) of them
    $contains      a list holding the value, or a string holding the substring;
                   `tags`: has the tag

A path that is absent matches `$ne` and `$nin` and nothing else. An object
value with no `$` key is an equality with that object.

`pushdown` extracts what the text index can select on exactly (namespace,
agents, kinds, tags) from the filter's top-level conjunction: a superset of
the matches, which `matches` then decides on the records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequest

DEPTH_MAX = 8  # nesting of $and/$or/$not and operator objects
NODES_MAX = 256  # conditions in one filter
LIST_ITEMS_MAX = 1000  # values of one $in/$nin
PATH_CHARS_MAX = 256
PATH_SEGMENTS_MAX = 16
VALUE_BYTES_MAX = 4096  # a compared string

OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$contains")
LOGICAL = ("$and", "$or", "$not")
ROOTS = ("agent_id", "kind", "tags", "namespace", "id", "created_at", "updated_at", "version", "content", "metadata")
ROOTS_WITH_PATHS = ("content", "metadata")
MISSING = object()


@dataclass(frozen=True)
class Cmp:
    path: tuple[str, ...]
    op: str
    value: Any


@dataclass(frozen=True)
class All:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Any_:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    part: Node


Node = Cmp | All | Any_ | Not
TRUE = All(())


def parse(raw: Any) -> Node:
    """The compiled filter, or InvalidRequest naming what is wrong."""
    if raw is None:
        return TRUE
    counter = [0]
    return _parse_object(raw, "filter", 1, counter)


def _bad(message: str) -> InvalidRequest:
    return InvalidRequest(message, field="filter")


def _count(counter: list[int]) -> None:
    counter[0] += 1
    if counter[0] > NODES_MAX:
        raise _bad(f"filter has more than {NODES_MAX} conditions")


def _parse_object(raw: Any, where: str, depth: int, counter: list[int]) -> Node:
    if depth > DEPTH_MAX:
        raise _bad(f"{where}: filter nested deeper than {DEPTH_MAX} levels")
    if not isinstance(raw, dict):
        raise _bad(f"{where} must be an object")
    parts: list[Node] = []
    for key, value in raw.items():
        if not isinstance(key, str):
            raise _bad(f"{where}: keys must be strings")
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise _bad(f"{where}.{key} must be a non-empty list of filters")
            subs = tuple(_parse_object(v, f"{where}.{key}[{i}]", depth + 1, counter) for i, v in enumerate(value))
            parts.append(All(subs) if key == "$and" else Any_(subs))
        elif key == "$not":
            parts.append(Not(_parse_object(value, f"{where}.$not", depth + 1, counter)))
        elif key.startswith("$"):
            known = ", ".join(LOGICAL + OPERATORS)
            raise _bad(f"{where}: unknown operator {key[:32]!r} here (known: {known}; comparison "
                       f"operators go under a field path)")
        else:
            parts.extend(_parse_field(_path(key, where), value, f"{where}.{key}", depth + 1, counter))
    return parts[0] if len(parts) == 1 else All(tuple(parts))


def _path(key: str, where: str) -> tuple[str, ...]:
    if len(key) > PATH_CHARS_MAX:
        raise _bad(f"{where}: path longer than {PATH_CHARS_MAX} characters")
    path = tuple(key.split("."))
    if len(path) > PATH_SEGMENTS_MAX or any(not p for p in path):
        raise _bad(f"{where}: path {key[:64]!r} must be dot-separated names, at most {PATH_SEGMENTS_MAX}")
    if path[0] not in ROOTS:
        raise _bad(f"{where}: unknown field {path[0][:32]!r} (filterable: {', '.join(ROOTS)}, "
                   f"content.<path>, metadata.<path>)")
    if len(path) > 1 and path[0] not in ROOTS_WITH_PATHS:
        raise _bad(f"{where}: {path[0]} has no sub-fields")
    return path


def _parse_field(path: tuple[str, ...], value: Any, where: str, depth: int, counter: list[int]) -> list[Node]:
    if depth > DEPTH_MAX:
        raise _bad(f"{where}: filter nested deeper than {DEPTH_MAX} levels")
    if not (isinstance(value, dict) and any(isinstance(k, str) and k.startswith("$") for k in value)):
        _count(counter)
        return [Cmp(path, "$eq", _value(value, where))]
    out: list[Node] = []
    for op, operand in value.items():
        if op not in OPERATORS:
            raise _bad(f"{where}: unknown operator {str(op)[:32]!r} (known: {', '.join(OPERATORS)})")
        _count(counter)
        if op in ("$in", "$nin"):
            if not isinstance(operand, list):
                raise _bad(f"{where}.{op} must be a list")
            if len(operand) > LIST_ITEMS_MAX:
                raise _bad(f"{where}.{op} has more than {LIST_ITEMS_MAX} values")
            out.append(Cmp(path, op, tuple(_value(v, where) for v in operand)))
        else:
            out.append(Cmp(path, op, _value(operand, where)))
    return out


def _value(value: Any, where: str) -> Any:
    if isinstance(value, str) and len(value) > VALUE_BYTES_MAX:
        raise _bad(f"{where}: a compared string is longer than {VALUE_BYTES_MAX} characters")
    return value


# -- the language as JSON Schema (raftmem.openapi publishes it) --------------------
def schema_ref(name: str = "Filter") -> dict[str, Any]:
    """A whole filter, as a reference to the document's definitions (`schema_levels`)."""
    return {"$ref": f"#/components/schemas/{name}1"}


def schema_levels(name: str = "Filter") -> dict[str, Any]:
    """What `parse` accepts, as JSON Schema: one definition per nesting level
    (`{name}1` is a whole filter), so the depth bound is stated, not described.
    Not stated: at most NODES_MAX conditions in all."""
    text = {"type": "string", "maxLength": VALUE_BYTES_MAX}
    operand = {"anyOf": [{"not": {"type": "string"}}, text]}
    listed = {"type": "array", "maxItems": LIST_ITEMS_MAX, "items": operand}
    value = {"anyOf": [
        {"type": ["null", "boolean", "number", "array"]},
        text,
        {"type": "object", "propertyNames": {"not": {"pattern": "^[$]"}}, "description": "equality with it"},
        {"type": "object", "minProperties": 1, "propertyNames": {"enum": list(OPERATORS)},
         "properties": {op: listed if op in ("$in", "$nin") else operand for op in OPERATORS},
         "description": "operators, all of which must hold"},
    ]}
    plain = "|".join(r for r in ROOTS if r not in ROOTS_WITH_PATHS)
    nested = "|".join(ROOTS_WITH_PATHS)
    path = f"^(?:{plain}|(?:{nested})(?:[.][^.]+){{0,{PATH_SEGMENTS_MAX - 1}}})$"
    out: dict[str, Any] = {f"{name}Value": value}
    for depth in range(DEPTH_MAX, 0, -1):
        level: dict[str, Any] = {"type": "object", "additionalProperties": False,
                                 "propertyNames": {"maxLength": PATH_CHARS_MAX}}
        if depth < DEPTH_MAX:  # its parts are a level deeper
            deeper = {"$ref": f"#/components/schemas/{name}{depth + 1}"}
            level["properties"] = {"$and": {"type": "array", "minItems": 1, "items": deeper},
                                   "$or": {"type": "array", "minItems": 1, "items": deeper}, "$not": deeper}
            level["patternProperties"] = {path: {"$ref": f"#/components/schemas/{name}Value"}}
        else:
            level["maxProperties"] = 0
        out[f"{name}{depth}"] = level
    return out


# -- evaluation --------------------------------------------------------------------
def resolve(record: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = record.get(path[0], MISSING)
    for part in path[1:]:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return MISSING
    if path[0] in ("agent_id", "kind") and value is None:
        return MISSING
    return value


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: booleans are not numbers, 1 equals 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return bool(a == b)


def _ordered(a: Any, b: Any, op: str) -> bool:
    numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b))
    if not numbers and not (isinstance(a, str) and isinstance(b, str)):
        return False
    if op == "$gt":
        return bool(a > b)
    if op == "$gte":
        return bool(a >= b)
    if op == "$lt":
        return bool(a < b)
    return bool(a <= b)


def _compare(node: Cmp, record: Mapping[str, Any]) -> bool:
    value = resolve(record, node.path)
    op, operand = node.op, node.value
    tags = node.path == ("tags",)
    if op in ("$ne", "$nin"):
        return not _compare(Cmp(node.path, "$eq" if op == "$ne" else "$in", operand), record)
    if value is MISSING:
        return False
    if tags:
        held = value if isinstance(value, list) else []
        if op in ("$eq", "$contains"):
            return any(json_equal(t, operand) for t in held) or (op == "$eq" and json_equal(held, operand))
        if op == "$in":
            return any(json_equal(t, v) for t in held for v in operand)
        return any(_ordered(t, operand, op) for t in held)
    if op == "$eq":
        return json_equal(value, operand)
    if op == "$in":
        return any(json_equal(value, v) for v in operand)
    if op == "$contains":
        if isinstance(value, list):
            return any(json_equal(v, operand) for v in value)
        return isinstance(value, str) and isinstance(operand, str) and operand in value
    return _ordered(value, operand, op)


def matches(node: Node, record: Mapping[str, Any]) -> bool:
    if isinstance(node, Cmp):
        return _compare(node, record)
    if isinstance(node, All):
        return all(matches(p, record) for p in node.parts)
    if isinstance(node, Any_):
        return any(matches(p, record) for p in node.parts)
    return not matches(node.part, record)


# -- what the index can select on ------------------------------------------------------
@dataclass(frozen=True)
class Pushdown:
    agent_ids: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    tags_all: tuple[str, ...] = ()
    tags_any: tuple[str, ...] = ()


def pushdown(node: Node) -> Pushdown:
    """Exact string conditions of the top-level conjunction (a superset of the
    matches: `matches` still decides)."""
    conjuncts = list(node.parts) if isinstance(node, All) else [node]
    agents: list[str] | None = None
    kinds: list[str] | None = None
    tags_all: list[str] = []
    tags_any: tuple[str, ...] = ()
    for part in conjuncts:
        if not isinstance(part, Cmp) or len(part.path) != 1:
            continue
        field, op, value = part.path[0], part.op, part.value
        values: tuple[Any, ...] | None = None
        if op == "$eq":
            values = (value,)
        elif op == "$in":
            values = tuple(value)
        if field == "tags":
            if op in ("$eq", "$contains") and isinstance(value, str):
                tags_all.append(value)
            elif op == "$in" and value and all(isinstance(v, str) for v in value) and not tags_any:
                tags_any = tuple(value)
            continue
        if values is None or not values or not all(isinstance(v, str) for v in values):
            continue
        if field == "agent_id" and agents is None:
            agents = list(values)
        elif field == "kind" and kinds is None:
            kinds = list(values)
    return Pushdown(tuple(agents or ()), tuple(kinds or ()), tuple(tags_all), tags_any)
