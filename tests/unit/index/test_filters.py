"""Metadata filters become parameterised SQL; bad filters are clear errors."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest

from clipserve.errors import InvalidInputError
from clipserve.index.filters import where_clause

ROWS: list[dict[str, Any]] = [
    {"color": "red", "year": 1999, "tags": "cat", "exif": {"iso": 100}, "flag": True},
    {"color": "blue", "year": 2005, "tags": "dog", "exif": {"iso": 800}, "flag": False},
    {"color": "red", "year": 2012, "tags": "cat", "a-b": 1},
    {"color": None, "year": 2020},
]


def _matching(filters: dict[str, Any] | None) -> list[int]:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE items (row INTEGER, metadata TEXT)")
    db.executemany(
        "INSERT INTO items VALUES (?, ?)", [(i, json.dumps(r)) for i, r in enumerate(ROWS)]
    )
    sql, parameters = where_clause(filters)
    return [row for (row,) in db.execute(f"SELECT row FROM items WHERE {sql}", parameters)]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (None, [0, 1, 2, 3]),
        ({}, [0, 1, 2, 3]),
        ({"color": "red"}, [0, 2]),
        ({"color": None}, [3]),
        ({"year": {"gte": 2005, "lt": 2020}}, [1, 2]),
        ({"year": {"gt": 2005}}, [2, 3]),
        ({"year": {"lte": 1999}}, [0]),
        ({"color": "red", "year": {"gt": 2000}}, [2]),
        ({"tags": {"in": ["dog", "cat"]}}, [0, 1, 2]),
        ({"color": {"ne": "red"}}, [1, 3]),
        ({"color": {"ne": None}}, [0, 1, 2]),
        ({"exif.iso": {"gte": 400}}, [1]),
        ({"a-b": 1}, [2]),
        ({"flag": True}, [0]),
        ({"flag": False}, [1]),
        ({"color": {"eq": "blue"}}, [1]),
        ({"missing": "x"}, []),
    ],
)
def test_filters_select_the_right_rows(filters: dict[str, Any] | None, expected: list[int]) -> None:
    assert _matching(filters) == expected


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"color": {"like": "r%"}}, "unknown operator 'like'"),
        ({"x') OR 1=1 --": 1}, "filter key"),
        ({"a..b": 1}, "filter key"),
        ({"year": {"gt": [1]}}, "range bound"),
        ({"color": ["red"]}, "compare with a string"),
        ({"color": {"in": []}}, "'in' takes a list"),
        ({"color": {}}, "empty condition"),
    ],
)
def test_bad_filters_are_named_errors(filters: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(")):
        where_clause(filters)


def test_values_are_bound_never_pasted_into_sql() -> None:
    sql, parameters = where_clause({"color": "red' OR '1'='1"})
    assert "OR '1'" not in sql
    assert parameters == ["red' OR '1'='1"]
    assert _matching({"color": "red' OR '1'='1"}) == []
