"""The schema contract of a published asset: the one schema every publish to it conforms to.

An *asset* is the location every night of a dataset is published under (see
:func:`curator_flows.publish.asset_of`). Its contract is recorded there:

```
<asset>/_schema/<generation:08d>.json     one file per generation; the highest is in force
```

Invariants:
- the contract comes from the code when the code declares it
  (:func:`curator_flows.output_schema.declared_schema`), else from the first publish's data
  (every column nullable);
- a generation file is created exclusively (``O_EXCL`` locally, a conditional PUT on object
  stores, as leases are), so of two publishes that settle a contract at once exactly one
  writes each generation; the other reads it and conforms to it (or refuses);
- a *real change* (a column added or removed; with a declared schema, a column retyped) is
  refused (:class:`~curator_flows.errors.SchemaChangeError`, naming every difference) unless
  ``schema_evolution`` allows it: ``"add_columns"`` writes a new generation with the new
  columns (nullable: older nights lack them), ``"replace"`` one with the run's schema;
- values never change the contract: a value that does not fit its column's type makes its row
  invalid (:mod:`curator_flows.contract_cast`); the one exception is a column whose type is
  still unknown (``null``: every value of the first publish was null), which the first publish
  with a known type settles (a new generation);
- nested fields are nullable (only top-level columns are checked for nulls), so a struct is
  never refused by the Parquet writer for a null deep inside it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .errors import CorruptRunError, SchemaChangeError, StorageWriteError
from .fingerprint import digest
from .output_schema import describe, schema_from_json, schema_to_json
from .store import RunStore

CONTRACT_DIR = "_schema"
FORMAT = "curator-flows-schema"
EVOLUTIONS = ("strict", "add_columns", "replace")
#: times a publish re-reads the contract after another one wrote the generation it wanted
_SETTLE_ATTEMPTS = 5
#: reads of a generation file that is being written, and the pause between them (seconds)
_PARTIAL_READS, _PARTIAL_WAIT = 40, 0.05


@dataclass(frozen=True)
class Contract:
    """One generation of an asset's contract."""

    schema: Any
    generation: int
    source: str
    created_at: float
    run_id: str | None

    @property
    def fingerprint(self) -> str:
        return digest(schema_to_json(self.schema))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": 1,
            "generation": self.generation,
            "source": self.source,
            "created_at": self.created_at,
            "run_id": self.run_id,
            "fingerprint": self.fingerprint,
            "fields": describe(self.schema),
            "arrow_schema": schema_to_json(self.schema),
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Contract:
        return cls(
            schema=schema_from_json(record["arrow_schema"]),
            generation=int(record["generation"]),
            source=record.get("source") or "",
            created_at=float(record.get("created_at") or 0.0),
            run_id=record.get("run_id"),
        )

    def summary(self, asset_uri: str) -> dict[str, Any]:
        """What a marker, an asset event or a card says about the contract."""
        where = f"{asset_uri.rstrip('/')}/{generation_path(self.generation)}"
        return {
            "uri": where if self.generation else None,  # 0: none recorded (no columns yet)
            "generation": self.generation,
            "fingerprint": self.fingerprint,
            "source": self.source,
            "columns": {field.name: str(field.type) for field in self.schema},
            "fields": describe(self.schema),
        }


def generation_path(generation: int) -> str:
    return f"{CONTRACT_DIR}/{generation:08d}.json"


def read_contract(asset: RunStore) -> Contract | None:
    """The contract in force at ``asset`` (its highest generation), or ``None``."""
    generations = []
    for rel in asset.glob(f"{CONTRACT_DIR}/*.json"):
        stem = rel.rsplit("/", 1)[-1].removesuffix(".json")
        if stem.isdigit():
            generations.append(int(stem))
    for generation in sorted(generations, reverse=True):
        record = _read_generation(asset, generation)
        if record is not None and record.get("format") == FORMAT:
            return Contract.from_json(record)
    return None


def _read_generation(asset: RunStore, generation: int) -> dict[str, Any] | None:
    """One generation file. Created exclusively on local disk, a file is visible (empty) for
    an instant before its bytes: an undecodable one is read again until it is whole."""
    for _ in range(_PARTIAL_READS):
        try:
            return asset.read_json_if_exists(generation_path(generation))
        except CorruptRunError:  # not (yet) valid JSON
            time.sleep(_PARTIAL_WAIT)
    raise StorageWriteError(
        f"the schema contract {asset.uri}/{generation_path(generation)} is not valid JSON; "
        "if no publish is writing it, remove it and publish again"
    )


def relax_nested(schema):
    """``schema`` with every nested field nullable (top-level nullability kept)."""
    import pyarrow as pa

    def relax(type_):
        if pa.types.is_struct(type_):
            return pa.struct([pa.field(f.name, relax(f.type), True, f.metadata) for f in type_])
        if pa.types.is_list(type_) or pa.types.is_large_list(type_):
            item = type_.value_field
            maker = pa.list_ if pa.types.is_list(type_) else pa.large_list
            return maker(pa.field(item.name, relax(item.type), True, item.metadata))
        return type_

    return pa.schema(
        [pa.field(f.name, relax(f.type), f.nullable, f.metadata) for f in schema],
        metadata=None,
    )


@dataclass
class Differences:
    """How a run's schema differs from a contract."""

    added: list[Any]
    removed: list[Any]
    retyped: list[tuple[Any, Any]]
    #: contract columns of unknown type (``null``) that the run's data gives a type
    resolved: list[Any]

    @property
    def real(self) -> bool:
        return bool(self.added or self.removed or self.retyped)

    def lines(self) -> list[str]:
        out = [f"+ column {f.name!r} ({_type(f)}) is new" for f in self.added]
        out += [f"- column {f.name!r} ({_type(f)}) is gone" for f in self.removed]
        out += [
            f"~ column {old.name!r} was {_type(old)}, is now {_type(new)}"
            for old, new in self.retyped
        ]
        return out


def _type(field) -> str:
    from .columns import is_json_text

    nullable = "" if field.nullable else " not null"
    return f"{field.type}{' as JSON text' if is_json_text(field) else ''}{nullable}"


def differences(contract, proposed, *, declared: bool) -> Differences:
    """The differences between the schema ``contract`` and a run's ``proposed`` schema. The
    types of an undeclared schema come from data, not code: they never count as a retype."""
    import pyarrow as pa

    from .columns import is_json_text

    have = {f.name: f for f in contract}
    want = {f.name: f for f in proposed}
    added = [f for f in proposed if f.name not in have]
    removed = [f for f in contract if f.name not in want]
    retyped, resolved = [], []
    for name, old in have.items():
        new = want.get(name)
        if new is None:
            continue
        if pa.types.is_null(old.type) and not pa.types.is_null(new.type):
            resolved.append(new)
        elif declared and (old.type != new.type or is_json_text(old) != is_json_text(new)):
            retyped.append((old, new))
    return Differences(added, removed, retyped, resolved)


def settle(
    asset: RunStore,
    proposed,
    *,
    declared: bool,
    source: str,
    evolution: str,
    run_id: str,
) -> tuple[Contract, Differences | None]:
    """The contract this publish conforms to (writing a new generation when the asset has none,
    when a column of unknown type gets one, or when ``evolution`` allows a real change), and
    the differences found (``None`` for a new contract). Raises
    :class:`~curator_flows.errors.SchemaChangeError` for a real change ``evolution`` does not
    allow."""
    import pyarrow as pa

    if evolution not in EVOLUTIONS:
        from .errors import ConfigError

        raise ConfigError(f"schema_evolution={evolution!r}: choose one of {list(EVOLUTIONS)}")
    proposed = relax_nested(proposed)
    if not declared:
        proposed = pa.schema([f.with_nullable(True) for f in proposed])
    for _ in range(_SETTLE_ATTEMPTS):
        current = read_contract(asset)
        if current is None:
            candidate = Contract(proposed, 1, source, time.time(), run_id)
            found = None
        else:
            found = differences(current.schema, proposed, declared=declared)
            schema = _evolved(asset, current, proposed, found, evolution)
            if schema is None:
                return current, found
            kind = "replaced" if evolution == "replace" and found.real else "evolved"
            candidate = Contract(
                schema, current.generation + 1, f"{source} ({kind})", time.time(), run_id
            )
        if asset.create_exclusive(generation_path(candidate.generation), candidate.to_json()):
            return candidate, found
    raise StorageWriteError(
        f"the schema contract at {asset.uri}/{CONTRACT_DIR} kept changing while this publish "
        "settled it (other publishes evolving it at the same time); publish again"
    )


def _evolved(asset: RunStore, current: Contract, proposed, found: Differences, evolution: str):
    """The next generation's schema, or ``None`` when ``current`` stands."""
    import pyarrow as pa

    if not found.real:
        if not found.resolved:
            return None
        resolved = {f.name: f for f in found.resolved}
        return pa.schema(
            [resolved[f.name].with_nullable(True) if f.name in resolved else f
             for f in current.schema]
        )  # fmt: skip
    if evolution == "replace":
        return proposed
    if evolution == "add_columns" and not (found.removed or found.retyped):
        resolved = {f.name: f for f in found.resolved}
        kept = [resolved.get(f.name, f) for f in current.schema]
        return pa.schema(kept + [f.with_nullable(True) for f in found.added])
    allowed = (
        'schema_evolution="add_columns" allows only new columns; '
        if evolution == "add_columns"
        else ""
    )
    raise SchemaChangeError(
        f"this run's schema differs from the contract of {asset.uri} (generation "
        f"{current.generation}, {current.source}, written by run {current.run_id}):\n  "
        + "\n  ".join(found.lines())
        + f'\n{allowed}publish with schema_evolution="add_columns" (new nullable columns) or '
        '"replace" (a new contract for the nights to come), or change the code back',
        changes=found.lines(),
    )
