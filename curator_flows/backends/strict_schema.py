"""OpenAI structured outputs: when a ``response_format`` JSON schema can be sent ``strict``.

OpenAI's strict mode accepts a subset of JSON Schema and refuses the whole request (HTTP 400)
otherwise: the root is an object; every object is closed (``additionalProperties: false``) and
lists every property in ``required``; every node has a ``type`` (or is a ``$ref`` / ``anyOf``);
a ``$ref`` has no sibling keywords; some keywords are not permitted at all (``minLength``,
``uniqueItems``, ...). See docs/architecture.md ("Structured output").

Invariants:
- :func:`strict_json_schema` only makes changes that keep every answer the pydantic model
  accepts acceptable: it closes objects that declare their properties (pydantic ignores extra
  keys anyway), requires every declared property (optional ones then come as ``null`` or their
  value), drops ``default`` and inlines a ``$ref`` that carries sibling keywords. It never
  closes a free-form object (``dict[str, float]``, ``dict[str, Any]``, ``list[dict]``): that
  would change what the model may answer;
- :func:`strict_problem` is ``None`` exactly when the converted schema follows every rule
  above, else it names the first rule broken and where; such a schema is sent non-strict (the
  provider does not enforce it; every response is still validated against the model);
- both are pure functions of the schema (the decision is part of what a run sends, so of its
  identity through the schema).
"""

from __future__ import annotations

import copy
from typing import Any

#: keywords strict mode refuses ("'<keyword>' is not permitted")
NOT_PERMITTED = frozenset(
    {
        "minLength",
        "maxLength",
        "uniqueItems",
        "patternProperties",
        "unevaluatedProperties",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "unevaluatedItems",
        "contains",
        "minContains",
        "maxContains",
        "allOf",
        "not",
        "if",
        "then",
        "else",
        "dependentRequired",
        "dependentSchemas",
    }
)
#: sub-schema containers walked by the rules: keyword → how its value holds schemas
_CHILD_MAPS = ("properties", "$defs", "definitions")
_CHILD_LISTS = ("anyOf", "prefixItems")


def _resolve(root: dict[str, Any], ref: str) -> Any:
    if not ref.startswith("#/"):
        return None
    node: Any = root
    for raw in ref[2:].split("/"):
        key = raw.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def strict_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of a pydantic JSON schema in the form strict mode asks for (see the module
    docstring for what changes); free-form parts are left as they are."""
    schema = copy.deepcopy(schema)

    def visit(node: Any) -> Any:
        if isinstance(node, list):
            return [visit(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node and len(node) > 1:
            target = _resolve(schema, node["$ref"])
            if isinstance(target, dict) and "$ref" not in target:
                siblings = {k: v for k, v in node.items() if k != "$ref"}
                node = {**copy.deepcopy(target), **siblings}
        node.pop("default", None)
        if node.get("type") == "object" and isinstance(node.get("properties"), dict):
            node.setdefault("additionalProperties", False)
            node["required"] = list(node["properties"])
        return {key: visit(value) for key, value in node.items()}

    return visit(schema)


def strict_problem(schema: dict[str, Any]) -> str | None:
    """Why ``schema`` (as :func:`strict_json_schema` returns it) cannot be sent strict, or
    ``None`` when it can."""
    if schema.get("type") != "object":
        return "the root is not an object"
    return _node_problem(schema, ())


def _where(path: tuple[str, ...]) -> str:
    return "/".join(path) or "the root"


def _node_problem(node: Any, path: tuple[str, ...]) -> str | None:
    if not isinstance(node, dict):
        return f"{_where(path)} is not a schema object"
    if "$ref" in node:
        if len(node) > 1:
            return f"{_where(path)} has keywords beside $ref"
        return None
    for keyword in node:
        if keyword in NOT_PERMITTED:
            return f"{_where(path)} uses {keyword!r}"
    if "type" not in node and "anyOf" not in node:
        return f"{_where(path)} has no type (a free-form value)"
    if node.get("type") == "object" or "properties" in node:
        if node.get("additionalProperties") is not False:
            return f"{_where(path)} is a free-form object (additionalProperties is not false)"
        properties = node.get("properties") or {}
        missing = [key for key in properties if key not in (node.get("required") or [])]
        if missing:
            return f"{_where(path)} does not require {missing[0]!r}"
    for container in _CHILD_MAPS:
        children = node.get(container)
        if isinstance(children, dict):
            for key, child in children.items():
                problem = _node_problem(child, (*path, container, key))
                if problem is not None:
                    return problem
    for container in _CHILD_LISTS:
        children = node.get(container)
        if isinstance(children, list):
            for index, child in enumerate(children):
                problem = _node_problem(child, (*path, container, str(index)))
                if problem is not None:
                    return problem
    items = node.get("items")
    if isinstance(items, dict):
        return _node_problem(items, (*path, "items"))
    return None
