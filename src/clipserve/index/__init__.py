"""Persistent vector indexes with metadata: FAISS for search, SQLite for durability.

Example::

    catalog = Catalog(Path("data/indexes"))
    index = catalog.create("photos", model="ViT-B-32::openai", dim=512)
    index.upsert([NewItem("cat-1", "image", {"year": 2021}, vector)])
    hits = index.search(query_vector, k=10, filters={"year": {"gte": 2020}})
"""

from clipserve.index.collection import (
    Catalog,
    Hit,
    Index,
    IndexExistsError,
    IndexNotFoundError,
    ItemNotFoundError,
)
from clipserve.index.store import NewItem, StoredItem

__all__ = [
    "Catalog",
    "Hit",
    "Index",
    "IndexExistsError",
    "IndexNotFoundError",
    "ItemNotFoundError",
    "NewItem",
    "StoredItem",
]
