"""Casting a run's output to a published asset's schema contract, value by value.

Invariants:
- the result has exactly the contract's schema (names, order, types, field metadata): a
  published column never changes type because of its values;
- a value that cannot be cast makes its **row invalid**: the row is left out of what is
  published and reported with the column, the contract's type, the value's type, a preview of
  the value and the reason; nothing is silently truncated or rounded (Arrow's safe casts: 1.5
  is no int64, 2**70 is no int64);
- a JSON text column (:data:`~curator_flows.columns.JSON_TEXT`) is decoded before a cast to a
  typed column, and a typed column is encoded as JSON text for a JSON text contract column,
  so the same value reads the same whichever night wrote it;
- a ``None`` in a non-nullable contract column makes its row invalid;
- a column the contract has and the output lacks is null (invalid where non-nullable); a
  column the output has and the contract lacks is not published (the contract's diff decides
  beforehand whether that is allowed).

Whole columns are cast in one Arrow call; only a column whose cast fails is retried value by
value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .columns import is_json_text, json_text, json_text_array

#: characters of a value shown in an invalid row's report
PREVIEW_CHARS = 200
_REASON_CHARS = 300


@dataclass
class Conformed:
    """A table cast to the contract, and what was left out: ``invalid[i]`` lists the problems
    of input row ``i`` (its position in the table given)."""

    table: Any
    invalid: dict[int, list[dict[str, Any]]] = field(default_factory=dict)


def conform(table, contract) -> Conformed:
    """``table`` (a run's output, any schema) cast to the Arrow schema ``contract``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if table.schema.equals(contract, check_metadata=True):  # the common night: nothing to do
        return Conformed(table)
    invalid: dict[int, list[dict[str, Any]]] = {}
    arrays = []
    for target in contract:
        if target.name in table.column_names:
            source = table.schema.field(target.name)
            column = table.column(target.name).combine_chunks()
            array = _cast_column(column, source, target, invalid)
            stored = _stored_as(source)
        else:
            array = pa.nulls(table.num_rows, type=target.type)
            stored = "missing"
        if not target.nullable and array.null_count:
            reason = "null (or missing) in a column the contract declares non-nullable"
            for index in _null_positions(array):
                _add(invalid, index, target, stored, None, reason)
        arrays.append(array)
    out = pa.Table.from_arrays(arrays, schema=contract)
    if invalid:
        keep = pa.array([i not in invalid for i in range(table.num_rows)], type=pa.bool_())
        out = pc.filter(out, keep) if out.num_columns else out.slice(0, 0)
    return Conformed(out, invalid)


def _null_positions(array) -> list[int]:
    import pyarrow.compute as pc

    return pc.indices_nonzero(pc.is_null(array)).to_pylist()


def _stored_as(source) -> str:
    return "JSON text" if is_json_text(source) else str(source.type)


def _add(invalid: dict, index: int, target, stored: str, value: Any, reason: str) -> None:
    problems = invalid.setdefault(index, [])
    if any(p["column"] == target.name for p in problems):
        return
    problems.append(
        {
            "column": target.name,
            "contract_type": str(target.type),
            "output_type": stored,
            "value_type": type(value).__name__,
            "value": _preview(value),
            "reason": reason[:_REASON_CHARS],
        }
    )


def _preview(value: Any) -> str | None:
    if value is None:
        return None
    try:
        text = json_text(value)
    except ValueError:
        text = repr(value)
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def _cast_column(column, source, target, invalid: dict):
    """``column`` (of field ``source``) as ``target``'s type; bad values recorded in
    ``invalid`` (their slots null)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    source_json, target_json = is_json_text(source), is_json_text(target)
    if target_json:
        if source_json:
            return column.cast(target.type)
        return json_text_array(target.name, column.to_pylist()).cast(target.type)
    stored = _stored_as(source)
    if source_json:
        return _cast_values(_decoded(column.to_pylist()), target, stored, invalid)
    if column.type == target.type:
        return column
    try:
        return pc.cast(column, target.type, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return _cast_values(column.to_pylist(), target, stored, invalid)


def _decoded(texts: list[str | None]) -> list[Any]:
    """JSON texts as Python values (integers exact, whatever their width)."""
    return [None if text is None else json.loads(text) for text in texts]


def _cast_values(values: list[Any], target, stored: str, invalid: dict):
    """``values`` (Python) as an array of ``target``'s type, one by one where the whole list
    does not cast."""
    import pyarrow as pa

    whole = _cast_one(values, target.type)
    if not isinstance(whole, Exception):
        return whole
    good: list[Any] = []
    for index, value in enumerate(values):
        if value is None:
            good.append(None)
            continue
        cast = _cast_one([value], target.type)
        if isinstance(cast, Exception):
            reason = f"cannot be cast to {target.type}: {_reason(cast)}"
            _add(invalid, index, target, stored, value, reason)
            good.append(None)
        else:
            good.append(cast.to_pylist()[0])
    return pa.array(good, type=target.type)


def _cast_one(values: list[Any], type_) -> Any:
    """``values`` as an Arrow array of ``type_`` by Arrow's safe cast of their own type (no
    silent truncation); nested types also by direct conversion. The error when neither works."""
    import pyarrow as pa

    errors = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OverflowError)
    try:
        inferred = pa.array(values)
        return inferred if inferred.type == type_ else inferred.cast(type_, safe=True)
    except errors as exc:
        error: Exception = exc
    if pa.types.is_nested(type_):
        try:
            return pa.array(values, type=type_)
        except errors as exc:
            error = exc
    return error


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text
