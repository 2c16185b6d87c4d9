"""Model names → where the weights live, and fetching them through ``huggingface_hub``.

A model is named in one of three ways:

* a registry name ``ARCH::PRETRAINED`` as clip-as-service users know it (``ViT-B-32::openai``);
* a Hugging Face repo id in ``CLIPModel`` layout (``openai/clip-vit-base-patch32``);
* a local directory holding such a checkpoint, or an already exported ONNX pair.

Downloads go through ``huggingface_hub`` so ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_HUB_OFFLINE``
behave as users of that library expect.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from clipserve.errors import ModelNotFoundError, ModelUnavailableError

#: The files a checkpoint needs; weights are fetched in the first format the repo has.
_CONFIG_FILES = ["config.json", "preprocessor_config.json"]
_WEIGHT_FILES = ["model.safetensors", "pytorch_model.bin"]


@dataclass(frozen=True)
class ModelSpec:
    """A known checkpoint: its registry name, Hugging Face repo and shapes."""

    name: str
    repo_id: str
    embed_dim: int
    image_size: int


_KNOWN: tuple[ModelSpec, ...] = (
    ModelSpec("ViT-B-32::openai", "openai/clip-vit-base-patch32", 512, 224),
    ModelSpec("ViT-B-16::openai", "openai/clip-vit-base-patch16", 512, 224),
    ModelSpec("ViT-L-14::openai", "openai/clip-vit-large-patch14", 768, 224),
    ModelSpec("ViT-L-14-336::openai", "openai/clip-vit-large-patch14-336", 768, 336),
    ModelSpec("ViT-B-32::laion2b_s34b_b79k", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", 512, 224),
    ModelSpec("ViT-B-16::laion2b_s34b_b88k", "laion/CLIP-ViT-B-16-laion2B-s34B-b88K", 512, 224),
    ModelSpec("ViT-L-14::laion2b_s32b_b82k", "laion/CLIP-ViT-L-14-laion2B-s32B-b82K", 768, 224),
    ModelSpec("ViT-H-14::laion2b_s32b_b79k", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", 1024, 224),
    ModelSpec("ViT-g-14::laion2b_s34b_b88k", "laion/CLIP-ViT-g-14-laion2B-s34B-b88K", 1024, 224),
    ModelSpec(
        "ViT-bigG-14::laion2b_s39b_b160k", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", 1280, 224
    ),
)


def known_models() -> tuple[ModelSpec, ...]:
    """Every registry entry, default model first."""
    return _KNOWN


def _canonical(name: str) -> str:
    # clip-as-service spells pretrained tags with '-' or '_' and arch names with '/' or '-'.
    arch, _, tag = name.partition("::")
    return f"{arch.replace('/', '-').lower()}::{tag.replace('-', '_').lower()}"


_BY_NAME = {_canonical(spec.name): spec for spec in _KNOWN}


def lookup(name: str) -> ModelSpec | None:
    """The registry entry for ``name``; ``ViT-B/32::openai``, ``vit-b-32::openai`` also match."""
    if "::" not in name:
        return None
    return _BY_NAME.get(_canonical(name))


@dataclass(frozen=True)
class ResolvedModel:
    """A model name made concrete: a local directory with its files, and where it came from."""

    name: str
    directory: Path
    source: str  # "local", or the Hugging Face repo id


def _looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and "::" not in name


def resolve(name: str) -> ResolvedModel:
    """Find or fetch the checkpoint ``name`` refers to; raise a clear error if it cannot.

    A local directory is used as it is. A registry name or repo id is fetched from the
    Hugging Face hub (or its cache) with ``huggingface_hub.snapshot_download``.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return ResolvedModel(name=name, directory=path.resolve(), source="local")
    spec = lookup(name)
    if spec is not None:
        return ResolvedModel(name=spec.name, directory=_download(spec.repo_id), source=spec.repo_id)
    if _looks_like_repo_id(name):
        return ResolvedModel(name=name, directory=_download(name), source=name)
    known = ", ".join(spec.name for spec in _KNOWN)
    raise ModelNotFoundError(
        f"unknown model {name!r}: use a registry name ({known}), a Hugging Face repo id "
        "like 'openai/clip-vit-base-patch32', or a local directory"
    )


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        # One weights format only: repos that carry both would otherwise cost two downloads.
        for weights in _WEIGHT_FILES:
            directory = Path(snapshot_download(repo_id, allow_patterns=[*_CONFIG_FILES, weights]))
            if (directory / weights).is_file():
                break
    except RepositoryNotFoundError as exc:
        raise ModelNotFoundError(f"no model repository {repo_id!r} on the hub") from exc
    except GatedRepoError as exc:
        raise ModelUnavailableError(
            f"{repo_id!r} is gated: log in with `hf auth login` after accepting its terms"
        ) from exc
    except LocalEntryNotFoundError as exc:
        raise ModelUnavailableError(_offline_message(repo_id)) from exc
    except OSError as exc:  # network failures surface as OSError subclasses (httpx, requests)
        raise ModelUnavailableError(f"could not download {repo_id!r}: {exc}") from exc
    if not (directory / "config.json").is_file() or not _weights_file(directory):
        raise ModelUnavailableError(
            f"{repo_id!r} has no CLIPModel checkpoint (config.json + model.safetensors or "
            "pytorch_model.bin)"
        )
    return directory


def _offline_message(repo_id: str) -> str:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        return (
            f"model {repo_id!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
            f"run `clipserve export {repo_id}` once with network access (or unset "
            "HF_HUB_OFFLINE), or pass a local model directory"
        )
    return (
        f"model {repo_id!r} is not cached and the hub cannot be reached: check the network "
        "or HF_ENDPOINT, or pass a local model directory"
    )


def _weights_file(directory: Path) -> Path | None:
    for filename in _WEIGHT_FILES:
        candidate = directory / filename
        if candidate.is_file():
            return candidate
    return None


def weights_file(directory: Path) -> Path:
    """The checkpoint's weights file, preferring safetensors."""
    found = _weights_file(directory)
    if found is None:
        raise ModelUnavailableError(
            f"{directory} has no model.safetensors or pytorch_model.bin to export from"
        )
    return found


def is_cached(repo_id: str) -> bool:
    """Whether the checkpoint's config and weights are already in the Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    def cached(filename: str) -> bool:
        return isinstance(try_to_load_from_cache(repo_id, filename), str)

    return cached("config.json") and any(cached(name) for name in _WEIGHT_FILES)
