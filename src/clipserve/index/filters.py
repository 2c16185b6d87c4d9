"""Metadata filters: a small JSON language turned into a parameterised SQLite ``WHERE`` clause.

A filter is an object of conditions, all of which must hold::

    {"color": "red"}                          equality (strings, numbers, booleans, null)
    {"year": {"gte": 2000, "lt": 2010}}       ranges: gt, gte, lt, lte
    {"tag": {"in": ["cat", "dog"]}}           one of
    {"license": {"ne": "proprietary"}}        not equal

Keys name top-level fields of an item's metadata (``[A-Za-z0-9_.-]``; dots reach into nested
objects: ``"exif.iso"``). Values never reach the SQL text: they are bound parameters.
"""

from __future__ import annotations

import re
from typing import Any

from clipserve.errors import InvalidInputError

# Matched whole (fullmatch): a "$" anchor would also let a trailing newline through.
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_RANGE_OPERATORS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_MAX_IN = 1000
#: SQLite integers are 64-bit: a bigger one cannot even be bound to the query.
_SQLITE_INTEGERS = range(-(2**63), 2**63)

Scalar = str | int | float | bool | None


def where_clause(filters: dict[str, Any] | None) -> tuple[str, list[Any]]:
    """``(sql, parameters)`` matching items whose metadata satisfies ``filters``.

    ``sql`` is ``"1"`` (everything) for no filter.

    Raises:
        InvalidInputError: An unknown operator, a bad key or value, with the key named.
    """
    if not filters:
        return "1", []
    if not isinstance(filters, dict):
        raise InvalidInputError("filter must be an object of conditions")
    parts: list[str] = []
    parameters: list[Any] = []
    for key, condition in filters.items():
        path = _json_path(key)
        for sql, values in _conditions(key, condition):
            parts.append(sql.format(field=f"json_extract(metadata, '{path}')"))
            parameters.extend(values)
    return " AND ".join(parts) or "1", parameters


def _json_path(key: str) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key) or ".." in key or key.endswith("."):
        raise InvalidInputError(
            f"filter key {key!r}: use letters, digits, '_', '-' and '.' for nested fields"
        )
    # Quoted path segments: a key like "a-b" is a plain member name.
    return "$" + "".join(f'."{segment}"' for segment in key.split("."))


def _conditions(key: str, condition: Any) -> list[tuple[str, list[Any]]]:
    if not isinstance(condition, dict):
        return [_equals(key, condition)]
    if not condition:
        raise InvalidInputError(f"filter {key!r}: an empty condition object")
    out = []
    for operator, value in condition.items():
        if operator in _RANGE_OPERATORS:
            out.append((f"{{field}} {_RANGE_OPERATORS[operator]} ?", [_bound(key, value)]))
        elif operator == "eq":
            out.append(_equals(key, value))
        elif operator == "ne":
            if value is None:
                out.append(("{field} IS NOT NULL", []))
            else:
                out.append(("({field} IS NULL OR {field} != ?)", [_scalar(key, value)]))
        elif operator == "in":
            out.append(_one_of(key, value))
        else:
            raise InvalidInputError(
                f"filter {key!r}: unknown operator {operator!r}; use eq, ne, gt, gte, lt, lte, in"
            )
    return out


def _equals(key: str, value: Any) -> tuple[str, list[Any]]:
    if value is None:
        return "{field} IS NULL", []
    return "{field} = ?", [_scalar(key, value)]


def _one_of(key: str, values: Any) -> tuple[str, list[Any]]:
    if not isinstance(values, list) or not values or len(values) > _MAX_IN:
        raise InvalidInputError(f"filter {key!r}: 'in' takes a list of 1 to {_MAX_IN} values")
    bound = [_scalar(key, value) for value in values]
    return f"{{field}} IN ({', '.join('?' * len(bound))})", bound


def _bound(key: str, value: Any) -> int | float | str:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidInputError(f"filter {key!r}: a range bound must be a number or a string")
    return _in_range(key, value)


def _scalar(key: str, value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)  # SQLite's json_extract gives 1/0 for true/false
    if isinstance(value, int | float | str):
        return _in_range(key, value)
    raise InvalidInputError(
        f"filter {key!r}: compare with a string, number, boolean or null, not {_kind(value)}"
    )


def _kind(value: Any) -> str:
    # Named, not dumped as JSON: a value nested thousands of levels deep cannot be dumped.
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, dict) else type(value).__name__


def _in_range(key: str, value: int | float | str) -> int | float | str:
    if isinstance(value, int) and value not in _SQLITE_INTEGERS:
        raise InvalidInputError(
            f"filter {key!r}: an integer outside the 64-bit range (±2**63) of stored numbers"
        )
    return value
