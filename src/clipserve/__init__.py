"""clipserve: CLIP embeddings as a library, a server, a batch job and a search index."""

from clipserve.errors import ClipServeError
from clipserve.settings import Settings

__all__ = ["ClipServeError", "Settings"]
__version__ = "0.1.0"
