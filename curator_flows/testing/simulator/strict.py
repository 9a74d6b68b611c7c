"""OpenAI's strict structured-output rules, refused with the real 400 answers.

A request whose ``response_format.json_schema.strict`` (or a tool's ``function.strict``) is
true must carry a schema strict mode supports, else OpenAI answers HTTP 400 before generating
anything::

    {"error": {"message": "Invalid schema for response_format 'Recipe': In context=('properties',
     'scores'), 'additionalProperties' is required to be supplied and to be false.",
     "type": "invalid_request_error", "param": "response_format", "code": null}}

(for a function: ``Invalid schema for function '<name>': ...``, param
``tools[<i>].function.parameters``, code ``invalid_function_parameters``).

Invariants:
- :func:`strict_schema_error` returns the message of the first rule broken, walking the schema
  depth first in document order, or ``None`` for a schema strict mode accepts. The rules: the
  root is an object; a ``$ref`` has no sibling keywords; no keyword of :data:`NOT_PERMITTED`;
  every other node has a ``type`` (or is an ``anyOf``); every object has
  ``additionalProperties: false`` and lists every property in ``required``;
- the context is the path from the root as Python prints a tuple of strings, as OpenAI does;
- this module is the simulator's own reading of the rules, independent of the client's
  (``curator_flows.backends.strict_schema``), so a test against the simulator catches a client
  that sends what the real API refuses.
"""

from __future__ import annotations

from typing import Any

NOT_PERMITTED = (
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
)


def _context(path: tuple[str, ...]) -> str:
    return f"In context={path!r}, "


def strict_schema_error(schema: Any) -> str | None:
    """The reason strict mode refuses ``schema`` (without the ``Invalid schema for ...:``
    prefix), or ``None``."""
    if not isinstance(schema, dict) or schema.get("type") != "object":
        kind = schema.get("type") if isinstance(schema, dict) else None
        return f"schema must be a JSON Schema of 'type: \"object\"', got 'type: \"{kind}\"'."
    return _check(schema, ())


def _check(node: Any, path: tuple[str, ...]) -> str | None:
    if not isinstance(node, dict):
        return _context(path) + "schema must be a JSON Schema object."
    if "$ref" in node:
        extra = sorted(k for k in node if k != "$ref")
        if extra:
            return _context(path) + f"$ref cannot have keywords {set(extra)!r}."
        return None
    for keyword in node:
        if keyword in NOT_PERMITTED:
            return _context(path) + f"'{keyword}' is not permitted."
    if "type" not in node and "anyOf" not in node:
        return _context(path) + "schema must have a 'type' key."
    types = node.get("type")
    is_object = types == "object" or (isinstance(types, list) and "object" in types)
    if is_object or "properties" in node:
        if node.get("additionalProperties") is not False:
            return _context(path) + (
                "'additionalProperties' is required to be supplied and to be false."
            )
        properties = node.get("properties") or {}
        required = node.get("required")
        required = required if isinstance(required, list) else []
        for key in properties:
            if key not in required:
                return _context(path) + (
                    "'required' is required to be supplied and to be an array including every "
                    f"key in properties. Missing '{key}'."
                )
    for container in ("properties", "$defs", "definitions"):
        children = node.get(container)
        if isinstance(children, dict):
            for key, child in children.items():
                error = _check(child, (*path, container, key))
                if error is not None:
                    return error
    for container in ("anyOf", "prefixItems"):
        children = node.get(container)
        if isinstance(children, list):
            for index, child in enumerate(children):
                error = _check(child, (*path, container, str(index)))
                if error is not None:
                    return error
    items = node.get("items")
    if isinstance(items, dict):
        return _check(items, (*path, "items"))
    return None


def check_strict_request(body: dict[str, Any]) -> None:
    """Raise :class:`~.responses.InvalidRequest` as OpenAI does when a chat completion body
    asks for strict mode with a schema strict mode refuses (``response_format``, then tools)."""
    from .responses import InvalidRequest

    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        if isinstance(spec, dict) and spec.get("strict") is True:
            error = strict_schema_error(spec.get("schema"))
            if error is not None:
                raise InvalidRequest(
                    f"Invalid schema for response_format '{spec.get('name')}': {error}",
                    "response_format",
                )
    tools = body.get("tools")
    if not isinstance(tools, list):
        return
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or function.get("strict") is not True:
            continue
        if "parameters" not in function:
            continue
        error = strict_schema_error(function["parameters"])
        if error is not None:
            raise InvalidRequest(
                f"Invalid schema for function '{function.get('name')}': {error}",
                f"tools[{index}].function.parameters",
                "invalid_function_parameters",
            )
