"""Deterministic response content: sentences, and JSON documents that satisfy a JSON Schema.

Invariants:
- Everything here is a pure function of its inputs: the same request digest gives the same
  text and the same JSON document, in every process (no use of Python's salted ``hash``).
- `generate_for_schema` returns a value that validates against the schema for every schema
  pydantic v2 emits from ``model_json_schema()`` (objects, arrays with min/max items, tuples,
  sets, strings with length/format/pattern, enums, const, numbers with bounds and
  multipleOf, booleans, null, ``$defs``/``$ref`` including recursion, ``anyOf``/``oneOf``/
  ``allOf``, ``additionalProperties``).
- `violate_schema` returns JSON text that does NOT validate against an object schema with
  required fields (or, failing that, a value of the wrong type).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from typing import Any

import orjson

try:  # Python >= 3.11
    import re._constants as _sre_c
    import re._parser as _sre_parse
except ImportError:  # pragma: no cover - older interpreters
    import sre_constants as _sre_c  # type: ignore[no-redef]
    import sre_parse as _sre_parse  # type: ignore[no-redef]

WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        """
    the a of and to in is for on with as by at from that this it be are was were will can
    data model token prompt answer river mountain forest ocean city garden window market
    library engine signal pattern process system network cloud stream batch record table
    quiet bright rapid gentle ancient modern simple complex hidden open golden silver
    green blue red yellow purple orange small large early late warm cold soft loud
    run build write read learn move grow find keep hold bring carry follow guide share
    solve test check measure count sort merge split join filter map reduce send receive
    apple bread cheese coffee honey lemon mango olive pepper rice salt sugar tea tomato
    planet comet galaxy orbit rocket star moon sun light shadow energy matter wave field
    teacher student doctor farmer artist pilot writer singer builder driver painter chef
    morning evening night winter summer spring autumn monday friday today tomorrow always
    often rarely never quickly slowly carefully happily quietly boldly gently nearly
    question example reason result method theory detail summary chapter story poem letter
    village harbor bridge tower castle island valley desert canyon meadow lake shore hill
    copper iron glass paper stone wood cotton silk wool clay marble velvet amber crystal
    music rhythm melody harmony voice drum piano violin guitar flute chorus verse tempo
    idea plan goal path step stage phase layer level scale range shape color sound touch
    friend family neighbor partner leader member person people group team crowd nation
    circle square line point corner edge center border margin surface volume weight
    """.split()
    )
)
assert len(WORDS) >= 256, len(WORDS)

_MAX_DEPTH = 6
_HARD_DEPTH = 60


#: Request keys that change how a response is delivered, not what it says.
TRANSPORT_KEYS = ("stream", "stream_options")


def request_digest(payload: Any) -> bytes:
    """A stable 32-byte digest of a JSON-like payload (dict key order does not matter).

    For a request body, `TRANSPORT_KEYS` are ignored: streaming does not change content.
    """
    if isinstance(payload, dict) and any(k in payload for k in TRANSPORT_KEYS):
        payload = {k: v for k, v in payload.items() if k not in TRANSPORT_KEYS}
    return hashlib.blake2b(
        orjson.dumps(payload, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS),
        digest_size=32,
    ).digest()


def _byte_stream(digest: bytes, n: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.blake2b(digest + counter.to_bytes(4, "little"), digest_size=64).digest()
        counter += 1
    return bytes(out[:n])


def generate_text(digest: bytes, min_words: int = 6, max_words: int = 30) -> str:
    """A pseudo-random sentence of ``min_words..max_words`` words determined by `digest`."""
    span = max_words - min_words + 1
    stream = _byte_stream(digest, 2 + max_words)
    n = min_words + int.from_bytes(stream[:2], "little") % span
    words = [WORDS[b] for b in stream[2 : 2 + n]]
    words[0] = words[0].capitalize()
    return " ".join(words) + "."


def text_of_tokens(digest: bytes, tokens: int) -> str:
    """A pseudo-random text of exactly `tokens` estimated tokens (``4 * tokens`` characters,
    ending with a period), determined by `digest`."""
    chars = 4 * max(1, tokens)
    stream = _byte_stream(digest, 2 + chars // 2)
    words: list[str] = []
    length = -1
    for byte in stream:
        if length >= chars:
            break
        words.append(WORDS[byte])
        length += len(words[-1]) + 1
    words[0] = words[0].capitalize()
    text = " ".join(words)[: chars - 1]
    if text.endswith(" "):
        text = text[:-1] + "s"
    return text + "."


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """The longest prefix of `text` whose estimated token count is <= `max_tokens`."""
    return text[: max(0, max_tokens) * 4]


def rng_for(digest: bytes) -> random.Random:
    """A `random.Random` seeded from `digest` (deterministic across processes)."""
    return random.Random(int.from_bytes(digest[:16], "little"))


# --------------------------------------------------------------------------- JSON Schema


class SchemaError(ValueError):
    """The schema cannot be satisfied (e.g. an unresolvable ``$ref``)."""


_META_KEYS = frozenset(
    {"title", "description", "default", "examples", "$comment", "deprecated", "readOnly"}
)


class _Generator:
    def __init__(self, root: Any, rng: random.Random) -> None:
        self.root = root
        self.rng = rng

    # ---- helpers
    def resolve_ref(self, ref: str) -> Any:
        if not ref.startswith("#"):
            raise SchemaError(f"only local $ref are supported, got {ref!r}")
        node = self.root
        pointer = ref[1:]
        if pointer:
            for raw in pointer.lstrip("/").split("/"):
                token = raw.replace("~1", "/").replace("~0", "~")
                if isinstance(node, list):
                    node = node[int(token)]
                elif isinstance(node, dict) and token in node:
                    node = node[token]
                else:
                    raise SchemaError(f"unresolvable $ref {ref!r}")
        return node

    def deref(self, schema: Any) -> Any:
        """Follow ``$ref`` chains, merging sibling keywords over the target."""
        seen = 0
        while isinstance(schema, dict) and "$ref" in schema:
            target = self.resolve_ref(schema["$ref"])
            siblings = {k: v for k, v in schema.items() if k != "$ref" and k not in _META_KEYS}
            schema = {**target, **siblings} if siblings and isinstance(target, dict) else target
            seen += 1
            if seen > 100:
                raise SchemaError("$ref cycle")
        return schema

    def merge_all_of(self, schema: dict[str, Any]) -> dict[str, Any]:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for sub in schema["allOf"]:
            sub = self.deref(sub)
            if not isinstance(sub, dict):
                continue
            if "allOf" in sub:
                sub = self.merge_all_of(sub)
            for key, value in sub.items():
                if key == "properties" and "properties" in merged:
                    merged["properties"] = {**merged["properties"], **value}
                elif key == "required" and "required" in merged:
                    merged["required"] = list(dict.fromkeys([*merged["required"], *value]))
                elif key not in merged:
                    merged[key] = value
        return merged

    # ---- main entry
    def gen(self, schema: Any, depth: int) -> Any:
        if depth > _HARD_DEPTH:
            raise SchemaError("schema recursion too deep to satisfy")
        if schema is True or schema is None:
            return self.words(1, 3)
        if schema is False:
            raise SchemaError("false schema cannot be satisfied")
        schema = self.deref(schema)
        if not isinstance(schema, dict):
            return self.words(1, 3)
        if "allOf" in schema:
            schema = self.merge_all_of(schema)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema and schema["enum"]:
            return self.rng.choice(list(schema["enum"]))
        for key in ("anyOf", "oneOf"):
            if key in schema and schema[key]:
                branch = self.pick_branch(schema[key], depth)
                siblings = {
                    k: v
                    for k, v in schema.items()
                    if k not in ("anyOf", "oneOf", "discriminator") and k not in _META_KEYS
                }
                if siblings:
                    branch = self.deref(branch)
                    if isinstance(branch, dict):
                        branch = {**siblings, **branch}
                return self.gen(branch, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = self.pick_type(kind, depth)
        if kind is None:
            kind = self.infer_type(schema)
        method = getattr(self, "gen_" + str(kind), None)
        if method is None:
            return self.words(1, 3)
        return method(schema, depth)

    def pick_branch(self, branches: list[Any], depth: int) -> Any:
        if depth >= _MAX_DEPTH:
            # Prefer branches that terminate: null, scalars, then anything without $ref.
            def cost(branch: Any) -> int:
                b = branch if isinstance(branch, dict) else {}
                if b.get("type") == "null":
                    return 0
                if "$ref" not in b and b.get("type") not in ("object", "array", None):
                    return 1
                if "$ref" not in b:
                    return 2
                return 3

            return min(branches, key=cost)
        # Prefer specific branches: an unconstrained string (pydantic's loose encoding of
        # Decimal and friends) or a pattern we may fail to satisfy is used only when no
        # other non-null branch exists.
        specific = [b for b in branches if not self._is_loose(b)]
        if any(not (isinstance(b, dict) and b.get("type") == "null") for b in specific):
            return self.rng.choice(specific)
        return self.rng.choice(branches)

    @staticmethod
    def _is_loose(branch: Any) -> bool:
        if not isinstance(branch, dict):
            return False
        if "pattern" in branch:
            return True
        return branch.get("type") == "string" and not (
            {"format", "enum", "const", "contentSchema", "minLength", "maxLength"} & branch.keys()
        )

    def pick_type(self, kinds: list[str], depth: int) -> str:
        if depth >= _MAX_DEPTH and "null" in kinds:
            return "null"
        non_null = [k for k in kinds if k != "null"]
        if non_null and self.rng.random() < 0.8:
            return self.rng.choice(non_null)
        return self.rng.choice(kinds)

    @staticmethod
    def infer_type(schema: dict[str, Any]) -> str:
        if {"properties", "required", "additionalProperties", "minProperties"} & schema.keys():
            return "object"
        if {"items", "prefixItems", "minItems", "maxItems"} & schema.keys():
            return "array"
        if {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"} & schema.keys():
            return "number"
        return "string"

    # ---- scalars
    def words(self, lo: int, hi: int) -> str:
        n = self.rng.randint(lo, hi)
        return " ".join(self.rng.choice(WORDS) for _ in range(n))

    def gen_null(self, schema: dict[str, Any], depth: int) -> None:
        return None

    def gen_boolean(self, schema: dict[str, Any], depth: int) -> bool:
        return self.rng.random() < 0.5

    def _bounds(self, schema: dict[str, Any]) -> tuple[float | None, bool, float | None, bool]:
        lo, lo_excl, hi, hi_excl = schema.get("minimum"), False, schema.get("maximum"), False
        ex_lo, ex_hi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        if isinstance(ex_lo, bool):  # draft 4
            lo_excl = ex_lo
        elif ex_lo is not None and (lo is None or ex_lo >= lo):
            lo, lo_excl = ex_lo, True
        if isinstance(ex_hi, bool):
            hi_excl = ex_hi
        elif ex_hi is not None and (hi is None or ex_hi <= hi):
            hi, hi_excl = ex_hi, True
        return lo, lo_excl, hi, hi_excl

    def gen_integer(self, schema: dict[str, Any], depth: int) -> int:
        lo, lo_excl, hi, hi_excl = self._bounds(schema)
        ilo = None if lo is None else (math.floor(lo) + 1 if lo_excl else math.ceil(lo))
        ihi = None if hi is None else (math.ceil(hi) - 1 if hi_excl else math.floor(hi))
        if ilo is None and ihi is None:
            ilo, ihi = 0, 100
        elif ilo is None:
            ilo = ihi - 100 if ihi < 0 else max(0, ihi - 100)  # type: ignore[operator]
        elif ihi is None:
            ihi = ilo + 100
        step = schema.get("multipleOf")
        if isinstance(step, int | float) and step > 0:
            k_lo, k_hi = math.ceil(ilo / step), math.floor(ihi / step)  # type: ignore[operator]
            for _ in range(4):
                if k_lo <= k_hi:
                    value = self.rng.randint(k_lo, min(k_hi, k_lo + 100)) * step
                    if float(value).is_integer():
                        return int(value)
            return int(k_lo * step)
        if ilo > ihi:  # type: ignore[operator]
            return int(ilo)  # type: ignore[arg-type]
        return self.rng.randint(ilo, ihi)  # type: ignore[arg-type]

    def gen_number(self, schema: dict[str, Any], depth: int) -> float | int:
        lo, lo_excl, hi, hi_excl = self._bounds(schema)
        step = schema.get("multipleOf")
        if isinstance(step, int | float) and step > 0:
            flo = -1000.0 if lo is None else lo
            fhi = flo + 1000.0 if hi is None else hi
            k_lo, k_hi = math.ceil(flo / step), math.floor(fhi / step)
            if lo_excl and k_lo * step <= flo:
                k_lo += 1
            if hi_excl and k_hi * step >= fhi:
                k_hi -= 1
            k = self.rng.randint(k_lo, max(k_lo, min(k_hi, k_lo + 100)))
            value = k * step
            rounded = round(value, 10)
            return int(rounded) if float(rounded).is_integer() else rounded
        if lo is None and hi is None:
            lo, hi = 0.0, 100.0
        elif lo is None:
            lo = hi - 100.0  # type: ignore[operator]
        elif hi is None:
            hi = lo + 100.0
        for _ in range(8):
            value = round(lo + (hi - lo) * self.rng.random(), 2)  # type: ignore[operator]
            if self._in_bounds(value, lo, lo_excl, hi, hi_excl):
                return value
        mid = (lo + hi) / 2  # type: ignore[operator]
        return mid

    @staticmethod
    def _in_bounds(v: float, lo: Any, lo_excl: bool, hi: Any, hi_excl: bool) -> bool:
        if lo is not None and (v < lo or (lo_excl and v == lo)):
            return False
        if hi is not None and (v > hi or (hi_excl and v == hi)):
            return False
        return True

    def gen_string(self, schema: dict[str, Any], depth: int) -> str:
        min_len = int(schema.get("minLength", 0))
        max_len = schema.get("maxLength")
        max_len = None if max_len is None else int(max_len)
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            produced = self.string_for_pattern(pattern, min_len, max_len)
            if produced is not None:
                return produced
        fmt = schema.get("format")
        value = self.formatted(fmt) if isinstance(fmt, str) else None
        if value is None and "contentSchema" in schema:
            value = orjson.dumps(self.gen(schema["contentSchema"], depth + 1)).decode()
        if value is None:
            value = self.words(1, 4)
        if len(value) < min_len:
            filler = self.words(max(1, min_len // 5), max(1, min_len // 5) + 2)
            while len(value) < min_len:
                value = (value + " " + filler).strip()
        if max_len is not None and len(value) > max_len:
            value = value[:max_len]
        return value

    def formatted(self, fmt: str) -> str | None:
        r = self.rng
        if fmt == "date-time":
            return (
                f"20{r.randint(10, 29)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"
                f"T{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}Z"
            )
        if fmt == "date":
            return f"20{r.randint(10, 29)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"
        if fmt == "time":
            return f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}Z"
        if fmt == "duration":
            return f"P{r.randint(1, 30)}DT{r.randint(0, 23)}H"
        if fmt in ("email", "idn-email"):
            return f"{r.choice(WORDS)}.{r.choice(WORDS)}@example.com"
        if fmt in ("uri", "url", "iri", "uri-reference", "iri-reference"):
            return f"https://example.com/{r.choice(WORDS)}/{r.randint(1, 999)}"
        if fmt in ("hostname", "idn-hostname"):
            return f"{r.choice(WORDS)}.example.com"
        if fmt in ("uuid", "uuid1", "uuid3", "uuid4", "uuid5", "uuid6", "uuid7", "uuid8"):
            version = fmt[4:] or "4"
            h = f"{r.getrandbits(128):032x}"
            return f"{h[:8]}-{h[8:12]}-{version}{h[13:16]}-a{h[17:20]}-{h[20:32]}"
        if fmt in ("ipv4", "ipvanyaddress"):
            return f"10.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"
        if fmt == "ipv6":
            return f"fd00::{r.randint(1, 65535):x}"
        if fmt in ("ipv4network", "ipvanynetwork"):
            return f"10.{r.randint(0, 255)}.0.0/16"
        if fmt in ("ipv4interface", "ipvanyinterface"):
            return f"10.0.0.{r.randint(1, 254)}/24"
        if fmt == "ipv6network":
            return "fd00::/64"
        if fmt == "ipv6interface":
            return f"fd00::{r.randint(1, 65535):x}/64"
        return None

    def string_for_pattern(self, pattern: str, min_len: int, max_len: int | None) -> str | None:
        try:
            compiled = re.compile(pattern)
            parsed = _sre_parse.parse(pattern)
        except (re.error, RecursionError, ValueError):
            return None
        for _ in range(12):
            try:
                candidate = _RegexGen(self.rng).gen(parsed)
            except (RecursionError, ValueError):
                return None
            if (
                compiled.search(candidate)
                and len(candidate) >= min_len
                and (max_len is None or len(candidate) <= max_len)
            ):
                return candidate
        return None

    # ---- containers
    def gen_object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        props = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        out: dict[str, Any] = {}
        shallow = depth < _MAX_DEPTH
        for name, sub in props.items():
            if name in required or shallow:
                out[name] = self.gen(sub, depth + 1)
        for name in required:
            if name not in out:
                out[name] = self.gen(True, depth + 1)
        extra_schema = schema.get("additionalProperties", True)
        min_props = int(schema.get("minProperties", 0))
        max_props = schema.get("maxProperties")
        want_extra = 0
        if not props and isinstance(extra_schema, dict) and extra_schema:
            want_extra = self.rng.randint(1, 2) if shallow else 0
        want_extra = max(want_extra, min_props - len(out))
        if max_props is not None:
            want_extra = min(want_extra, int(max_props) - len(out))
        if extra_schema is not False:
            sub = extra_schema if isinstance(extra_schema, dict) else True
            i = 0
            while want_extra > 0:
                key = f"{self.rng.choice(WORDS)}_{i}"
                i += 1
                if key in out:
                    continue
                out[key] = self.gen(sub, depth + 1)
                want_extra -= 1
        if max_props is not None and len(out) > int(max_props):
            for name in [n for n in out if n not in required][: len(out) - int(max_props)]:
                del out[name]
        return out

    def gen_array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        items = schema.get("items", True)
        if isinstance(items, list):  # draft 4-7 tuple form
            prefix, items = items, schema.get("additionalItems", True)
        min_items = int(schema.get("minItems", 0))
        max_items = schema.get("maxItems")
        if depth >= _MAX_DEPTH:
            n = min_items
        else:
            n = self.rng.randint(min_items, min_items + 2) if min_items else self.rng.randint(1, 3)
        if prefix:
            n = max(n, len(prefix)) if items is not False else len(prefix)
        if max_items is not None:
            n = min(n, int(max_items))
        unique = bool(schema.get("uniqueItems"))
        out: list[Any] = []
        seen: set[bytes] = set()
        attempts = 0
        while len(out) < n and attempts < n * 20 + 20:
            attempts += 1
            index = len(out)
            sub = prefix[index] if prefix and index < len(prefix) else items
            value = self.gen(sub, depth + 1)
            if unique:
                key = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
                if key in seen:
                    continue
                seen.add(key)
            out.append(value)
        return out


class _RegexGen:
    """Builds a string matching a parsed Python regular expression (best effort)."""

    _CATEGORY_CHARS = {
        _sre_c.CATEGORY_DIGIT: "0123456789",
        _sre_c.CATEGORY_NOT_DIGIT: "abcxyzABC_",
        _sre_c.CATEGORY_WORD: "abcdefxyzABC0123_",
        _sre_c.CATEGORY_NOT_WORD: " -.,",
        _sre_c.CATEGORY_SPACE: " ",
        _sre_c.CATEGORY_NOT_SPACE: "abcxyz019",
    }
    _POOL = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-. "

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.groups: dict[int, str] = {}

    def gen(self, parsed: Any, depth: int = 0) -> str:
        if depth > 50:
            raise ValueError("regex too deep")
        out: list[str] = []
        for op, av in parsed:
            out.append(self.gen_op(op, av, depth))
        return "".join(out)

    def gen_op(self, op: Any, av: Any, depth: int) -> str:
        c = _sre_c
        if op is c.LITERAL:
            return chr(av)
        if op is c.NOT_LITERAL:
            return next(ch for ch in self._POOL if ord(ch) != av)
        if op is c.ANY:
            return self.rng.choice("abcxyz")
        if op is c.IN:
            return self.gen_in(av)
        if op in (c.MAX_REPEAT, c.MIN_REPEAT) or op is getattr(c, "POSSESSIVE_REPEAT", None):
            lo, hi, sub = av
            hi = lo + 3 if hi is c.MAXREPEAT or hi > lo + 3 else hi
            count = self.rng.randint(lo, hi)
            return "".join(self.gen(sub, depth + 1) for _ in range(count))
        if op is c.SUBPATTERN:
            group, _add, _del, sub = av
            text = self.gen(sub, depth + 1)
            if group is not None:
                self.groups[group] = text
            return text
        if op is getattr(c, "ATOMIC_GROUP", None):
            return self.gen(av, depth + 1)
        if op is c.BRANCH:
            _, branches = av
            return self.gen(self.rng.choice(branches), depth + 1)
        if op is c.GROUPREF:
            return self.groups.get(av, "")
        if op is c.CATEGORY:
            return self.rng.choice(self._CATEGORY_CHARS.get(av, "a"))
        # AT (anchors), ASSERT, ASSERT_NOT and anything else produce no text.
        return ""

    def gen_in(self, items: Any) -> str:
        c = _sre_c
        negate = bool(items) and items[0][0] is c.NEGATE
        candidates: list[str] = []
        allowed_checks = []
        for op, av in items:
            if op is c.LITERAL:
                candidates.append(chr(av))
                allowed_checks.append(lambda ch, av=av: ord(ch) == av)
            elif op is c.RANGE:
                lo, hi = av
                candidates.append(chr(self.rng.randint(lo, min(hi, lo + 25))))
                allowed_checks.append(lambda ch, lo=lo, hi=hi: lo <= ord(ch) <= hi)
            elif op is c.CATEGORY:
                chars = self._CATEGORY_CHARS.get(av, "a")
                candidates.append(self.rng.choice(chars))
                allowed_checks.append(lambda ch, chars=chars: ch in chars)
        if negate:
            for ch in self._POOL:
                if not any(check(ch) for check in allowed_checks):
                    return ch
            return "~"
        return self.rng.choice(candidates) if candidates else "a"


def generate_for_schema(schema: Any, digest: bytes) -> Any:
    """A JSON value, determined by `digest`, that validates against `schema`."""
    return _Generator(schema, rng_for(digest)).gen(schema, 0)


def generate_json_text(schema: Any, digest: bytes) -> str:
    """`generate_for_schema` serialized as compact JSON text."""
    return orjson.dumps(generate_for_schema(schema, digest)).decode()


def violate_schema(schema: Any, digest: bytes) -> str:
    """JSON text that fails validation against `schema` (or non-JSON text without a schema)."""
    if not isinstance(schema, dict):
        return "This is not valid JSON {" + generate_text(digest, 3, 6)
    gen = _Generator(schema, rng_for(digest))
    resolved: Any = schema
    try:
        resolved = gen.deref(schema)
        if isinstance(resolved, dict) and "allOf" in resolved:
            resolved = gen.merge_all_of(resolved)
        if isinstance(resolved, dict) and resolved.get("required"):
            value = gen.gen(resolved, 0)
            if isinstance(value, dict):
                value.pop(resolved["required"][0], None)
                return orjson.dumps(value).decode()
    except SchemaError:
        pass
    kind = resolved.get("type") if isinstance(resolved, dict) else None
    if kind == "array":
        return orjson.dumps({"unexpected": "object instead of array"}).decode()
    if kind in ("string", "integer", "number", "boolean", "null"):
        return orjson.dumps([kind, "wrong type"]).decode()
    return orjson.dumps(["not", "an", "object"]).decode()


def text_for_mode(
    mode: str,
    schema: Any,
    digest: bytes,
    min_words: int = 6,
    max_words: int = 30,
    tokens: int | None = None,
) -> str:
    """Response text for an output mode: ``text``, ``json_object`` or ``json_schema``.

    ``json_schema`` without a schema yields a JSON object; ``tokens``: a text answer of exactly
    that many tokens. Raises `SchemaError` for a schema that cannot be satisfied.
    """
    if mode == "text" and tokens is not None:
        return text_of_tokens(digest, tokens)
    if mode == "json_schema":
        if schema is None:
            return orjson.dumps({"result": generate_text(digest, 3, 12)}).decode()
        try:
            return generate_json_text(schema, digest)
        except (RecursionError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise SchemaError(str(exc) or type(exc).__name__) from exc
    if mode == "json_object":
        return orjson.dumps({"result": generate_text(digest, min_words, max_words)}).decode()
    return generate_text(digest, min_words, max_words)


def invalid_text_for_mode(mode: str, schema: Any, digest: bytes) -> str:
    """Text that breaks the output mode's contract (schema-invalid JSON, or not JSON at all)."""
    if mode == "json_schema" and schema is not None:
        return violate_schema(schema, digest)
    return "This is not valid JSON {" + generate_text(digest, 3, 6)
