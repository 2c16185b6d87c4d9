"""Helpers the test suite and the benchmarks share, shipped inside the package.

- :mod:`clipserve.testing.synthetic` — coloured shapes with captions (PIL and numpy only);
- :mod:`clipserve.testing.models` — test CLIP checkpoints built once per machine and cached
  (a random-initialised ViT-B/32 and a tiny trained CLIP; torch is needed only to build);
- :mod:`clipserve.testing.hf_server` — a Hugging Face Hub–shaped file server on loopback.

Nothing here imports torch or transformers at import time.
"""
