"""What the fuzzing tests and their fixtures share: the index the live server holds."""

from __future__ import annotations

from typing import Any

#: The index the live server holds for the search routes.
INDEX = "fuzz"
#: Metadata of the indexed items: strings, numbers, booleans, nulls and a nested object.
METADATA: list[dict[str, Any]] = [
    {"color": "red", "year": 1999, "flag": True, "exif": {"iso": 100}},
    {"color": "blue", "year": 2005, "flag": False, "tags": ["a", "b"]},
    {"color": None, "year": 2020.5, "source": "https://example.com/x.png"},
    {"caption": "a red circle", "year": -(2**63)},
]
