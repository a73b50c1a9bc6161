"""Request validation: pure functions that turn client input into clean values
or raise InvalidRequest with a message naming the field. Nothing here touches
state, so a bad request changes nothing."""

from __future__ import annotations

import base64
import re
from typing import Any

import orjson

from . import embeddings
from .commands import Fence
from .config import CONSISTENCY_LEVELS, LEVEL_ALIASES, LimitsConfig, canonical_level
from .errors import InvalidRequest, PayloadTooLarge

_NAME_RE = re.compile(r"[A-Za-z0-9._:-]+")  # fullmatch: "$" would let a final "\n" through
MEMORY_FIELDS = frozenset({"agent_id", "kind", "content", "tags", "metadata", "ttl_s", "embedding", "actor",
                           "ttl_refresh_on_read"})
TTL_S_MAX = 10 * 365 * 24 * 3600
# Below a second, a memory could expire between its write and the writer's read
# (expiry is decided in ms by the leader's clock): refused rather than lost.
TTL_S_MIN = 1.0
AGENT_CHARS_MAX = 256
KIND_CHARS_MAX = 64
IDEMPOTENCY_KEY_CHARS_MAX = 256


def name(what: str, value: str, chars_max: int) -> str:
    if not value:
        raise InvalidRequest(f"{what} must not be empty", field=what)
    if len(value) > chars_max:
        raise InvalidRequest(f"{what} is longer than {chars_max} characters", field=what)
    if not _NAME_RE.fullmatch(value):
        raise InvalidRequest(f"{what} {value[:64]!r} must match [A-Za-z0-9._:-]+", field=what)
    if not value.strip("."):
        # "." and ".." are path segments that URL normalisation removes: a request
        # forwarded to another node would name something else.
        raise InvalidRequest(f"{what} must not be made of dots only", field=what)
    return value


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


def json_object(raw: bytes, limits: LimitsConfig, allowed: frozenset[str], empty_ok: bool = False) -> dict[str, Any]:
    """A request body that must be a JSON object of known fields (an empty body
    is `{}` when `empty_ok`)."""
    if empty_ok and not raw.strip():
        return {}
    body = parse_json(raw, limits)
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(
            f"unknown field(s): {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})", fields=unknown
        )
    return body


def json_int(what: str, value: Any, default: int | None, lo: int, hi: int) -> int:
    """An integer field of a JSON body, in [lo, hi]; `default` when absent (None:
    required)."""
    if value is None:
        if default is None:
            raise InvalidRequest(f"{what} is required", field=what)
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{what} must be an integer, got {str(value)[:32]!r}", field=what)
    if not lo <= value <= hi:
        raise InvalidRequest(f"{what} must be in [{lo}, {hi}], got {value}", field=what)
    return value


def parse_json(raw: bytes, limits: LimitsConfig) -> Any:
    if len(raw) > limits.body_bytes_max:
        raise PayloadTooLarge(f"body is {len(raw)} bytes, the limit is {limits.body_bytes_max}")
    if not raw.strip():
        raise InvalidRequest("body must be a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidRequest(f"body is not valid JSON: {e}") from e


def memory_fields(body: Any, limits: LimitsConfig) -> dict[str, Any]:
    """The writable fields of a memory, checked; unknown fields are refused."""
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a JSON object")
    unknown = sorted(set(body) - MEMORY_FIELDS)
    if unknown:
        raise InvalidRequest(
            f"unknown field(s): {', '.join(unknown)} (allowed: {', '.join(sorted(MEMORY_FIELDS))})",
            fields=unknown,
        )
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


def actor(value: Any) -> str:
    """Who wrote (or deleted) a memory: an agent's name, kept in its history."""
    return _label("actor", value, AGENT_CHARS_MAX)


def version_header(what: str, value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip().strip('"')
    try:
        version = int(value)
    except ValueError:
        raise InvalidRequest(f"{what} must be a memory version (an integer), got {value[:32]!r}") from None
    if version < 0:
        raise InvalidRequest(f"{what} must not be negative")
    return version


FENCE_MAX = (1 << 63) - 1


def if_fence(value: str | None, limits: LimitsConfig) -> Fence | None:
    """`If-Fence: <namespace>/<lock name>:<fence>` (a lock name may hold ':', a
    namespace no '/': the last ':' ends the name)."""
    if value is None:
        return None
    ns, slash, rest = value.strip().partition("/")
    lock_name, colon, number = rest.rpartition(":")
    if not slash or not colon or not (number.isascii() and number.isdigit()) or len(number) > 19 or int(number) > FENCE_MAX:
        raise InvalidRequest(f"If-Fence must look like '<namespace>/<lock name>:<fence>', got {value[:80]!r}",
                             field="If-Fence")
    name("If-Fence namespace", ns, limits.namespace_chars_max)
    name("If-Fence lock name", lock_name, limits.id_chars_max)
    return Fence(ns, lock_name, int(number))


def if_none_match(value: str | None) -> bool:
    if value is None:
        return False
    if value.strip() != "*":
        raise InvalidRequest("If-None-Match supports only '*' (create only)")
    return True


def idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    return _label("Idempotency-Key", value, IDEMPOTENCY_KEY_CHARS_MAX)


def consistency(value: str | None) -> str | None:
    """A level by its name or the design's alias (read-your-writes: session)."""
    if value is None or value == "":
        return None
    level = canonical_level(value)
    if level not in CONSISTENCY_LEVELS:
        known = ", ".join([*CONSISTENCY_LEVELS, *LEVEL_ALIASES])
        raise InvalidRequest(f"unknown consistency level {value[:32]!r} (known: {known})", field="consistency")
    return level


def tokens(value: str | None, shards: int) -> dict[int, int]:
    """`after=` tokens "<shard>:<index>", comma-separated: shard -> highest index."""
    out: dict[int, int] = {}
    if not value:
        return out
    for part in value.split(","):
        try:
            s, i = part.strip().split(":")
            shard, index = int(s), int(i)
        except ValueError:
            raise InvalidRequest(f"token {part[:40]!r} must look like '<shard>:<index>'", field="after") from None
        if not 0 <= shard < shards or index < 0:
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


def int_param(what: str, value: str | None, default: int, lo: int, hi: int) -> int:
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        raise InvalidRequest(f"{what} must be an integer, got {value[:32]!r}", field=what) from None
    if not lo <= n <= hi:
        raise InvalidRequest(f"{what} must be in [{lo}, {hi}]", field=what)
    return n


def encode_cursor(created_at: int, memory_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([created_at, memory_id])).decode().rstrip("=")


def decode_cursor(value: str | None) -> tuple[int, str] | None:
    if not value:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        created_at, memory_id = orjson.loads(raw)
        if not isinstance(created_at, int) or not isinstance(memory_id, str):
            raise ValueError
        return created_at, memory_id
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise InvalidRequest("cursor is not one this server issued", field="cursor") from None
