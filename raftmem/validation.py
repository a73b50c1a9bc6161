"""Request validation: pure functions that turn client input into clean values
or raise InvalidRequest with a message naming the field. Nothing here touches
state, so a bad request changes nothing.

Each rule that a request field follows is stated once, here, and published
twice: as the check the services run, and as the JSON Schema the OpenAPI
document shows (`*_schema` beside each check; raftmem/openapi imports them).
Where a check is a regular expression, the same pattern is the schema's, so
the document and the server cannot drift (tests/unit/test_contract_rules.py
draws values and asks both)."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from . import embeddings
from .commands import Fence
from .config import CONSISTENCY_LEVELS, LEVEL_ALIASES, LimitsConfig, canonical_level
from .config import (
    STALENESS_MS_MAX as STALENESS_MS_MAX,  # the bound of max_staleness_ms, with the other rules
)
from .errors import InvalidRequest, PayloadTooLarge

Schema = dict[str, Any]

MEMORY_FIELDS = frozenset({"agent_id", "kind", "content", "tags", "metadata", "ttl_s", "embedding", "actor",
                           "ttl_refresh_on_read"})
TTL_S_MAX = 10 * 365 * 24 * 3600
# Below a second, a memory could expire between its write and the writer's read
# (expiry is decided in ms by the leader's clock): refused rather than lost.
TTL_S_MIN = 1.0
AGENT_CHARS_MAX = 256
KIND_CHARS_MAX = 64
# A request body nests at most this deep: a memory is stored, searched and sent
# inside several more levels (log entries, relay requests, search answers), and
# orjson encodes at most 254.
JSON_DEPTH_MAX = 64
IDEMPOTENCY_KEY_CHARS_MAX = 256
NODE_ID_CHARS_MAX = 64
HOST_CHARS_MAX = 253  # a DNS name's longest
LIST_PAGE_DEFAULT = 100
FENCE_MAX = (1 << 63) - 1
# A Raft index in a token, and a memory version in If-Match: up to 18 digits
# (a log does not reach 10^18 entries), which reads as one short pattern.
TOKEN_INDEX_MAX = 10**18 - 1
VERSION_MAX = 10**18 - 1
TIME_MS_MAX = (1 << 63) - 1
FLAG_WORDS = {"true": True, "false": False, "1": True, "0": False}


def int_pattern(hi: int) -> str:
    """A regular expression (no anchors) for the decimal integers 0..hi, written
    without leading zeros: the form the server prints and the only one it reads."""
    top = str(hi)
    if set(top) == {"9"} and len(top) > 1:  # every number of up to len(top) digits
        return f"(?:0|[1-9][0-9]{{0,{len(top) - 1}}})"
    parts = ["0"] if hi >= 0 else []
    if len(top) > 1:
        parts.append("[1-9]" if len(top) == 2 else f"[1-9][0-9]{{0,{len(top) - 2}}}")
    for i, digit in enumerate(top):
        low = 1 if i == 0 else 0
        if int(digit) > low:
            below = f"[{low}-{int(digit) - 1}]" if int(digit) - 1 > low else str(low)
            rest = len(top) - i - 1
            parts.append(top[:i] + below + (f"[0-9]{{{rest}}}" if rest > 1 else "[0-9]" if rest else ""))
    if hi > 0:
        parts.append(top)
    return "(?:" + "|".join(dict.fromkeys(parts)) + ")"


def _compiled(pattern: str) -> re.Pattern[str]:
    """A schema pattern as Python checks it: anchored with ^ and $ for JSON
    Schema, fullmatched here ("$" alone would let a final "\\n" through)."""
    assert pattern.startswith("^") and pattern.endswith("$"), pattern
    return re.compile(pattern[1:-1], re.ASCII)


# -- names: namespaces, ids, lock names -----------------------------------------------------
NAME_CHARS = "A-Za-z0-9._:-"
_CHARS_RE = re.compile(f"[{NAME_CHARS}]+")
# "." and ".." are path segments that URL normalisation removes: a request
# forwarded to another node would name something else; so not dots only.
NOT_DOTS_ONLY = r"(?!\.+$)"


def name_schema(chars_max: int) -> Schema:
    return {"type": "string", "minLength": 1, "maxLength": chars_max,
            "pattern": f"^{NOT_DOTS_ONLY}[{NAME_CHARS}]+$"}


def name(what: str, value: str, chars_max: int) -> str:
    if not value:
        raise InvalidRequest(f"{what} must not be empty", field=what)
    if len(value) > chars_max:
        raise InvalidRequest(f"{what} is longer than {chars_max} characters", field=what)
    if not _CHARS_RE.fullmatch(value):
        raise InvalidRequest(f"{what} {value[:64]!r} must match [{NAME_CHARS}]+", field=what)
    if not value.strip("."):
        raise InvalidRequest(f"{what} must not be made of dots only", field=what)
    return value


# -- labels: free-form names (agents, tags, holders, workers, keys) -------------------------
LABEL_PATTERN = "^[^\\u0000-\\u001f]+$"


def label_schema(chars_max: int) -> Schema:
    return {"type": "string", "minLength": 1, "maxLength": chars_max, "pattern": LABEL_PATTERN}


def _label(what: str, value: Any, chars_max: int) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{what} must be a non-empty string", field=what)
    if len(value) > chars_max:
        raise InvalidRequest(f"{what} is longer than {chars_max} characters", field=what)
    if any(ord(c) < 32 for c in value):
        raise InvalidRequest(f"{what} must not contain control characters", field=what)
    return value


def label(what: str, value: Any, chars_max: int) -> str:
    """A free-form name (an agent, a lock holder, a worker): a non-empty string
    without control characters."""
    return _label(what, value, chars_max)


def actor(value: Any) -> str:
    """Who wrote (or deleted) a memory: an agent's name, kept in its history."""
    return _label("actor", value, AGENT_CHARS_MAX)


def idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    return _label("Idempotency-Key", value, IDEMPOTENCY_KEY_CHARS_MAX)


# -- numbers and flags -------------------------------------------------------------------------
def int_schema(lo: int, hi: int) -> Schema:
    return {"type": "integer", "minimum": lo, "maximum": hi}


def integral(value: Any) -> int | None:
    """A JSON integer as Python's int, or None if it is not one. JSON (and JSON
    Schema) has numbers, not integers: 5.0 is the integer 5, as 5 is; true is not."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def json_int(what: str, value: Any, default: int | None, lo: int, hi: int) -> int:
    """An integer field of a JSON body, in [lo, hi]; `default` when absent (None:
    required)."""
    if value is None:
        if default is None:
            raise InvalidRequest(f"{what} is required", field=what)
        return default
    number = integral(value)
    if number is None:
        raise InvalidRequest(f"{what} must be an integer, got {str(value)[:32]!r}", field=what)
    if not lo <= number <= hi:
        raise InvalidRequest(f"{what} must be in [{lo}, {hi}], got {number}", field=what)
    return number


def json_int_field(body: Mapping[str, Any], key: str, default: int | None, lo: int, hi: int) -> int:
    """`json_int` of `body[key]`: absent means `default`, but an explicit null is
    refused (the field's schema is an integer; schemathesis sent `null` and a
    task was created with the default)."""
    if key in body and body[key] is None:
        raise InvalidRequest(f"{key} must be an integer, got null", field=key)
    return json_int(key, body.get(key), default, lo, hi)


_INT_RE = re.compile(r"-?[0-9]+", re.ASCII)


def int_param(what: str, value: str | None, default: int, lo: int, hi: int) -> int:
    """An integer query parameter in [lo, hi], in decimal digits ("+5", "5_000"
    or other digits than ASCII's are not); `default` when absent."""
    if value is None:
        return default
    if not _INT_RE.fullmatch(value):
        raise InvalidRequest(f"{what} must be an integer, got {value[:32]!r}", field=what)
    n = int(value)
    if not lo <= n <= hi:
        raise InvalidRequest(f"{what} must be in [{lo}, {hi}]", field=what)
    return n


FLAG_SCHEMA: Schema = {"type": "boolean", "description": "true or false (1 and 0 are read so too)"}


def flag(what: str, value: str | None, default: bool = False) -> bool:
    """A boolean query parameter: true or false (or 1, 0; any case); `default` when absent."""
    if value is None:
        return default
    found = FLAG_WORDS.get(value.lower())
    if found is None:
        raise InvalidRequest(f"{what} must be true or false, got {value[:32]!r}", field=what)
    return found


def query(params: Mapping[str, str]) -> None:
    """A public request's query, checked before anything reads it: no empty
    value (a parameter not given is left out, not sent empty), none given twice."""
    getall = getattr(params, "getall", None)
    for key in set(params):
        values = getall(key) if getall is not None else [params[key]]
        if len(values) > 1:
            raise InvalidRequest(f"parameter {key[:32]!r} is given {len(values)} times; give it once", field=key)
        if values[0] == "":
            raise InvalidRequest(f"parameter {key[:32]!r} is empty; leave it out instead", field=key)


# -- consistency levels and tokens ---------------------------------------------------------------
def levels_accepted(allowed: Iterable[str] = CONSISTENCY_LEVELS) -> list[str]:
    """The names a request may give for the levels `allowed`: the levels and
    their aliases."""
    allowed = tuple(allowed)
    return [*allowed, *(alias for alias, level in LEVEL_ALIASES.items() if level in allowed)]


def consistency_schema(allowed: Iterable[str] = CONSISTENCY_LEVELS) -> Schema:
    return {"type": "string", "enum": levels_accepted(allowed)}


def consistency(value: str | None) -> str | None:
    """A level by its name or the design's alias (read-your-writes: session)."""
    if value is None:
        return None
    level = canonical_level(value)
    if level not in CONSISTENCY_LEVELS:
        known = ", ".join(levels_accepted())
        raise InvalidRequest(f"unknown consistency level {value[:32]!r} (known: {known})", field="consistency")
    return level


LEVEL_HEADER = "X-Raftmem-Consistency"


def requested_level(query: Mapping[str, str], headers: Mapping[str, str]) -> str | None:
    """A read's level: `consistency=`, else the X-Raftmem-Consistency header
    (both are checked when both are given; the parameter wins)."""
    said = consistency(query.get("consistency"))
    header = headers.get(LEVEL_HEADER)
    from_header = consistency(header) if header is not None else None
    return said if said is not None else from_header


def token_pattern(shards: int) -> str:
    return f"{int_pattern(shards - 1)}:{int_pattern(TOKEN_INDEX_MAX)}"


def tokens_schema(shards: int) -> Schema:
    token = token_pattern(shards)
    return {"type": "string", "pattern": f"^{token}(?:,{token})*$"}


_TOKEN_RE = re.compile(f"(0|[1-9][0-9]{{0,5}}):({int_pattern(TOKEN_INDEX_MAX)})", re.ASCII)


def tokens(value: str | None, shards: int) -> dict[int, int]:
    """`after=` tokens "<shard>:<index>", comma-separated: shard -> highest index."""
    out: dict[int, int] = {}
    if value is None:
        return out
    for part in value.split(","):
        match = _TOKEN_RE.fullmatch(part)
        if match is None:
            raise InvalidRequest(f"token {part[:40]!r} must look like '<shard>:<index>'", field="after")
        shard, index = int(match.group(1)), int(match.group(2))
        if not shard < shards:
            raise InvalidRequest(f"token {part[:40]!r} names no shard of this cluster", field="after")
        out[shard] = max(out.get(shard, 0), index)
    return out


def context(value: str | None, shards: int) -> dict[int, int]:
    """An X-Raftmem-Context header: a causal context, the same tokens as `after=`
    (at most one per shard is kept)."""
    try:
        return tokens(value, shards)
    except InvalidRequest as e:
        raise InvalidRequest(f"X-Raftmem-Context: {e.message}", field="X-Raftmem-Context") from None


def merge_tokens(*maps: dict[int, int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for tokens_map in maps:
        for shard, index in tokens_map.items():
            out[shard] = max(out.get(shard, 0), index)
    return out


def format_tokens(tokens_map: dict[int, int]) -> str:
    return ",".join(f"{s}:{i}" for s, i in sorted(tokens_map.items()))


# -- conditional headers ---------------------------------------------------------------------------
VERSION_PATTERN = f'^(?:{int_pattern(VERSION_MAX)}|"{int_pattern(VERSION_MAX)}")$'
_VERSION_RE = _compiled(VERSION_PATTERN)


def version_schema() -> Schema:
    return {"type": "string", "pattern": VERSION_PATTERN}


def version_header(what: str, value: str | None) -> int | None:
    """If-Match: a memory version, bare or quoted as the ETag gives it."""
    if value is None:
        return None
    if not _VERSION_RE.fullmatch(value.strip()):
        raise InvalidRequest(f"{what} must be a memory version (an integer, as the ETag gives it), got "
                             f"{value[:32]!r}", field=what)
    return int(value.strip().strip('"'))


def if_none_match(value: str | None) -> bool:
    if value is None:
        return False
    if value.strip() != "*":
        raise InvalidRequest("If-None-Match supports only '*' (create only)", field="If-None-Match")
    return True


IF_NONE_MATCH_SCHEMA: Schema = {"type": "string", "enum": ["*"]}


def if_fence_schema(limits: LimitsConfig) -> Schema:
    """`<namespace>/<lock name>:<fence>`: a namespace has no '/', a lock name
    may hold ':' (the last ':' ends it)."""
    ns, lock = limits.namespace_chars_max, limits.id_chars_max
    return {"type": "string", "pattern": f"^(?!\\.+/)[{NAME_CHARS}]{{1,{ns}}}/(?!\\.+:[0-9]+$)"
                                        f"[{NAME_CHARS}]{{1,{lock}}}:{int_pattern(FENCE_MAX)}$"}


_FENCE_NUMBER_RE = re.compile(int_pattern(FENCE_MAX), re.ASCII)


def if_fence(value: str | None, limits: LimitsConfig) -> Fence | None:
    """`If-Fence: <namespace>/<lock name>:<fence>` (a lock name may hold ':', a
    namespace no '/': the last ':' ends the name)."""
    if value is None:
        return None
    ns, slash, rest = value.strip().partition("/")
    lock_name, colon, number = rest.rpartition(":")
    if not slash or not colon or not _FENCE_NUMBER_RE.fullmatch(number):
        raise InvalidRequest(f"If-Fence must look like '<namespace>/<lock name>:<fence>' (a fence in [0, "
                             f"{FENCE_MAX}]), got {value[:80]!r}", field="If-Fence")
    name("If-Fence namespace", ns, limits.namespace_chars_max)
    name("If-Fence lock name", lock_name, limits.id_chars_max)
    return Fence(ns, lock_name, int(number))


# -- JSON bodies ------------------------------------------------------------------------------------
def parse_json(raw: bytes, limits: LimitsConfig) -> Any:
    if len(raw) > limits.body_bytes_max:
        raise PayloadTooLarge(f"body is {len(raw)} bytes, the limit is {limits.body_bytes_max}")
    if not raw.strip():
        raise InvalidRequest("body must be a JSON object")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidRequest(f"body is not valid JSON: {e}") from e
    # Counted in C first: a body with fewer brackets cannot nest deeper.
    if raw.count(b"[") + raw.count(b"{") > JSON_DEPTH_MAX and _deeper_than(value, JSON_DEPTH_MAX):
        raise InvalidRequest(f"body nests deeper than {JSON_DEPTH_MAX} levels")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def json_object(raw: bytes, limits: LimitsConfig, allowed: frozenset[str], empty_ok: bool = False) -> dict[str, Any]:
    """A request body that must be a JSON object of known fields (an empty body
    is `{}` when `empty_ok`)."""
    if empty_ok and not raw.strip():
        return {}
    return known_fields(parse_json(raw, limits), allowed)


def known_fields(body: Any, allowed: frozenset[str], what: str = "body") -> dict[str, Any]:
    """`body` if it is a JSON object of known fields; else what is wrong."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"{what} must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(
            f"{what}: unknown field(s): {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})",
            fields=unknown,
        )
    return body


def memory_schema(limits: LimitsConfig) -> Schema:
    """A memory as written (PUT, POST, a batch's put and create)."""
    nullable = {"type": "null"}
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "agent_id": {"anyOf": [label_schema(AGENT_CHARS_MAX), nullable]},
            "kind": {"anyOf": [label_schema(KIND_CHARS_MAX), nullable]},
            "content": {"description": "any JSON value"},
            "tags": {"anyOf": [{"type": "array", "maxItems": limits.tags_max,
                                "items": label_schema(limits.tag_chars_max),
                                "description": "repeated tags are kept once"}, nullable]},
            "metadata": {"type": ["object", "null"]},
            "ttl_s": {"type": ["number", "null"], "minimum": TTL_S_MIN, "maximum": TTL_S_MAX,
                      "description": "seconds until it expires (shorter ones could expire before they are read)"},
            "ttl_refresh_on_read": {"type": ["boolean", "null"],
                                    "description": "a sliding TTL: reads extend it (needs ttl_s)"},
            "actor": {"anyOf": [label_schema(AGENT_CHARS_MAX), nullable],
                      "description": "who writes it (kept in its history)"},
            "embedding": {"anyOf": [embeddings.vector_schema(), nullable],
                          "description": "one dimension per namespace, its first embedding's (a put with another "
                                         "is refused, 400)"},
        },
        # ttl_refresh_on_read: true needs a TTL to extend.
        "if": {"properties": {"ttl_refresh_on_read": {"const": True}}, "required": ["ttl_refresh_on_read"]},
        "then": {"properties": {"ttl_s": {"type": "number"}}, "required": ["ttl_s"]},
    }


def memory_fields(body: Any, limits: LimitsConfig) -> dict[str, Any]:
    """The writable fields of a memory, checked; unknown fields are refused."""
    body = known_fields(body, MEMORY_FIELDS)
    out: dict[str, Any] = {}
    if body.get("agent_id") is not None:
        out["agent_id"] = _label("agent_id", body["agent_id"], AGENT_CHARS_MAX)
    if body.get("kind") is not None:
        out["kind"] = _label("kind", body["kind"], KIND_CHARS_MAX)
    out["content"] = body.get("content")
    tags = body.get("tags")
    if tags is None:
        tags = []
    if not isinstance(tags, list):
        raise InvalidRequest("tags must be a list of strings", field="tags")
    if len(tags) > limits.tags_max:
        raise InvalidRequest(f"at most {limits.tags_max} tags", field="tags")
    clean_tags: list[str] = []
    for tag in tags:
        tag = _label("tag", tag, limits.tag_chars_max)
        if tag not in clean_tags:
            clean_tags.append(tag)
    out["tags"] = clean_tags
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidRequest("metadata must be a JSON object", field="metadata")
    out["metadata"] = metadata or {}
    ttl = body.get("ttl_s")
    if ttl is not None:
        if isinstance(ttl, bool) or not isinstance(ttl, int | float):
            raise InvalidRequest("ttl_s must be a number of seconds", field="ttl_s")
        if not TTL_S_MIN <= ttl <= TTL_S_MAX:
            raise InvalidRequest(
                f"ttl_s must be in [{TTL_S_MIN:g}, {TTL_S_MAX}] seconds (a memory that expires sooner than "
                f"that could be gone before it is read back)", field="ttl_s")
        out["ttl_s"] = ttl
    if body.get("embedding") is not None:
        out["embedding"] = embeddings.pack(embeddings.check_vector("embedding", body["embedding"]))
    if body.get("actor") is not None:
        out["actor"] = actor(body["actor"])
    refresh = body.get("ttl_refresh_on_read")
    if refresh is not None and not isinstance(refresh, bool):
        raise InvalidRequest("ttl_refresh_on_read must be true or false", field="ttl_refresh_on_read")
    if refresh and ttl is None:
        raise InvalidRequest("ttl_refresh_on_read needs ttl_s (the TTL a read extends)", field="ttl_refresh_on_read")
    if refresh:
        out["ttl_refresh_on_read"] = True
    return out


# -- list cursors ------------------------------------------------------------------------------------
def encode_cursor(created_at: int, memory_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([created_at, memory_id])).decode().rstrip("=")


def decode_cursor(value: str | None) -> tuple[int, str] | None:
    if value is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        created_at, memory_id = orjson.loads(raw)
        if not isinstance(created_at, int) or not isinstance(memory_id, str):
            raise ValueError
        return created_at, memory_id
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise InvalidRequest("cursor is not one this server issued", field="cursor") from None
