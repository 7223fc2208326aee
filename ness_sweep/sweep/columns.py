"""The results table's column types: one typed column per run setting, from the schema's type hints, or for a
free-typed key (``ness.rank``: a count or a fraction) from what the space samples or the value is."""

from __future__ import annotations

import typing
from typing import Any, Dict, List, Tuple

import pyarrow as pa

from ..config import UserError, flatten, schema_types
from .space import Distribution, SearchSpace

# Run-config keys that are not columns of the results table: seeds get their own column, the rest
# only steer a single run's command line.
NOT_COLUMNS = ("seed", "seeds", "output", "preset")


def column_types(settings: Dict[str, Any], space: SearchSpace, schema: type) -> List[Tuple[str, pa.DataType]]:
    """One typed column per run-config key of ``settings`` (a plan's run settings, ``schema`` their run-config
    schema with the trials' methods' groups): the schema's type, or for free-typed keys (ness.rank: a count or a
    fraction) the type the space samples or the value has."""
    hints = schema_types(schema)
    columns = []
    for key, value in flatten(settings).items():
        if key in NOT_COLUMNS and key not in space.search:  # a searched seed is a column of its own
            continue
        hint = hints[key]
        if hint is Any and key in space.search:
            kind = _distribution_type(space.search[key], f"{space.source}: search.{key}")
        elif hint is Any:
            kind = _value_type(value)
        else:
            kind = _hint_type(hint)
        columns.append((key, kind))
    return columns


def _hint_type(hint: Any) -> pa.DataType:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union:
        return _hint_type(args[0])
    if typing.get_origin(hint) in (list, List):
        return pa.list_(_hint_type(args[0]))
    return {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}[hint]


def _value_type(value: Any) -> pa.DataType:
    if value is None:
        return pa.float64()
    return _hint_type(type(value))


def _distribution_type(dist: Distribution, where: str) -> pa.DataType:
    if dist.kind in ("loguniform", "uniform"):
        return pa.float64()
    if dist.kind == "int":
        return pa.int64()
    kinds = {_value_type(v) for v in dist.values if v is not None}
    if len(kinds) > 1:
        raise UserError(f"{where}: choice options must share one type here (an int rank is a count, "
                          f"a float a fraction); got {list(dist.values)}")
    return kinds.pop() if kinds else pa.float64()
