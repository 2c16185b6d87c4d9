"""The CLIP text tokenizer: OpenAI's byte-level BPE, run by the Rust ``tokenizers`` library.

The merge list ships inside the package (``vocab/bpe_simple_vocab_16e6.txt.gz``, the file
OpenAI's CLIP and open_clip ship). From it this module builds the exact CLIP vocabulary of
49,408 tokens, in OpenAI's order:

* the 256 byte-level unicode characters (GPT-2's ``bytes_to_unicode`` table),
* the same 256 with the end-of-word suffix ``</w>``,
* the merged token of each of the first 49,152 - 256 - 2 merges,
* ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).

and a :class:`tokenizers.Tokenizer` that produces the same ids as Hugging Face's
``CLIPTokenizerFast`` (transformers 4) / ``CLIPTokenizer`` (transformers 5): NFC, whitespace
runs collapsed to one space and lower-casing; split by CLIP's regex; byte-level mapping; BPE
with ``</w>``; then ``<|startoftext|> … <|endoftext|>`` around every text. Texts longer than
the context are cut so that the end token is kept, as OpenAI's
``clip.tokenize(..., truncate=True)`` does.

Literal special tokens in a text become the special ids, matched case-insensitively as in
OpenAI's tokenizer and transformers 4. (transformers 5, loading the repo's
``vocab.json``/``merges.txt`` files, matches ``<|endoftext|>`` case-sensitively: it differs
on texts like ``"<|ENDOFTEXT|>"``.) Like every Hugging Face CLIP tokenizer, and unlike
OpenAI's original, there is no ``ftfy.fix_text`` and no HTML unescaping (``"&amp;"`` stays
three tokens, curly quotes and full-width letters are kept), and lower-casing is per
character (a final capital sigma becomes ``σ``, not ``ς``).

Batches are padded with 0 after the end token, to the longest text of the batch rather than to
the context length: the text tower is causal and pools at the (first) end token, so the padding
never changes an embedding, and short queries cost a fraction of a full 77-token pass.
"""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tokenizers import (
    AddedToken,
    Encoding,
    Regex,
    Tokenizer,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers.models import BPE

from clipserve.errors import InvalidInputError

__all__ = [
    "BOS_TOKEN",
    "CONTEXT_LENGTH",
    "EOS_TOKEN",
    "VOCAB_SIZE",
    "ClipTokenizer",
    "load_tokenizer",
    "write_hf_tokenizer_files",
]

#: Number of token positions of every CLIP text tower (start and end tokens included).
CONTEXT_LENGTH = 77
#: The start-of-text special token (id 49406).
BOS_TOKEN = "<|startoftext|>"
#: The end-of-text special token (id 49407); also the unknown and the padding token of HF's files.
EOS_TOKEN = "<|endoftext|>"
#: Size of the CLIP vocabulary.
VOCAB_SIZE = 49408

_VOCAB_PACKAGE = "clipserve.models"
_VOCAB_FILE = ("vocab", "bpe_simple_vocab_16e6.txt.gz")
_N_MERGES = 49152 - 256 - 2
_END_OF_WORD = "</w>"
# OpenAI's pattern (clip/simple_tokenizer.py), as Hugging Face's CLIPTokenizer uses it.
_SPLIT_PATTERN = (
    r"<\|startoftext\|>|<\|endoftext\|>"
    r"|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters.

    Printable Latin-1 bytes map to themselves; the others (controls, space, ...) to 256 + n.
    The insertion order of the result is the order of the first 256 vocabulary entries.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    byte_values = list(printable)
    code_points = list(printable)
    extra = 0
    seen = set(printable)
    for byte in range(256):
        if byte not in seen:
            byte_values.append(byte)
            code_points.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(byte_values, code_points, strict=True)}


@functools.lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Read the packaged merge list and build CLIP's vocabulary (token -> id) and merges."""
    raw = resources.files(_VOCAB_PACKAGE).joinpath(*_VOCAB_FILE).read_bytes()
    # Inflate only the head of the file: the header line and the merges used (a fifth of it).
    inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)  # gzip container
    head = bytearray()
    newlines = 0
    for start in range(0, len(raw), 1 << 16):
        chunk = inflater.decompress(raw[start : start + (1 << 16)])
        head += chunk
        newlines += chunk.count(b"\n")
        if newlines > _N_MERGES:
            break
    lines = head.decode("utf-8").split("\n", _N_MERGES + 1)[1 : _N_MERGES + 1]
    merges = [(first, second) for first, second in (line.split() for line in lines)]
    if len(merges) != _N_MERGES:  # pragma: no cover - a damaged package
        raise RuntimeError(f"CLIP merge list has {len(merges)} merges, expected {_N_MERGES}")
    byte_chars = list(_bytes_to_unicode().values())
    tokens = [
        *byte_chars,
        *(c + _END_OF_WORD for c in byte_chars),
        *(a + b for a, b in merges),
        BOS_TOKEN,
        EOS_TOKEN,
    ]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:  # pragma: no cover - a damaged package
        raise RuntimeError(f"CLIP vocabulary has {len(vocab)} tokens, expected {VOCAB_SIZE}")
    return vocab, merges


def _build_backend(context_length: int) -> Tokenizer:
    """Assemble the Rust tokenizer (normalizer, pre-tokenizer, BPE, post-processor)."""
    vocab, merges = _vocab_and_merges()
    tokenizer = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix=_END_OF_WORD,
            fuse_unk=False,
            unk_token=EOS_TOKEN,  # never produced: every byte is in the vocabulary
        )
    )
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # Keep the pattern's matches, drop what lies between them (the spaces).
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    # The special tokens are matched in the normalized (lower-cased) text, as OpenAI's
    # tokenizer matches them in lower-cased text. They already have ids 49406 and 49407.
    tokenizer.add_special_tokens(
        [AddedToken(BOS_TOKEN, normalized=True), AddedToken(EOS_TOKEN, normalized=True)]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A {EOS_TOKEN}",
        special_tokens=[(BOS_TOKEN, vocab[BOS_TOKEN]), (EOS_TOKEN, vocab[EOS_TOKEN])],
    )
    # Truncation counts the two special tokens, so a long text keeps its end token.
    tokenizer.enable_truncation(max_length=context_length)
    tokenizer.no_padding()
    return tokenizer


class ClipTokenizer:
    """CLIP's text tokenizer: texts to ids with start/end tokens, and batches to int64 arrays.

    Build it through :func:`load_tokenizer` (cached per process). Thread-safe: the Rust
    tokenizer is only read.
    """

    #: Id of ``<|startoftext|>``.
    bos_id: int
    #: Id of ``<|endoftext|>``.
    eos_id: int
    #: Number of tokens in the vocabulary (49,408).
    vocab_size: int
    #: Most ids a text gets, start and end tokens included.
    context_length: int

    def __init__(self, context_length: int = CONTEXT_LENGTH) -> None:
        """Build the tokenizer; texts get at most ``context_length`` ids (at least 2)."""
        if isinstance(context_length, bool) or not isinstance(context_length, int):
            raise TypeError(f"context_length must be an int, got {type(context_length).__name__}")
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2, got {context_length}")
        vocab, _ = _vocab_and_merges()
        self.context_length = context_length
        self.bos_id = vocab[BOS_TOKEN]
        self.eos_id = vocab[EOS_TOKEN]
        self.vocab_size = len(vocab)
        self._backend = _build_backend(context_length)
        # encode_batch_fast (tokenizers >= 0.20) skips the offsets, which are not needed here.
        self._encode_batch: Callable[[list[str]], list[Encoding]] = getattr(
            self._backend, "encode_batch_fast", self._backend.encode_batch
        )

    @property
    def backend(self) -> Tokenizer:
        """The underlying :class:`tokenizers.Tokenizer` (truncation set; do not mutate)."""
        return self._backend

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text: ``<|startoftext|>`` … ``<|endoftext|>``.

        Texts longer than ``context_length`` are truncated keeping the end token (never an
        error); an empty text gives ``[bos_id, eos_id]``. Uses the Rust batch encoder.

        Raises:
            InvalidInputError: ``texts`` is a single ``str``, or an item is not a ``str``
                (the message names the index and the type), or a text holds a lone
                surrogate and so is no valid unicode.
        """
        batch = _check_texts(texts)
        if not batch:
            return []
        try:
            encodings = self._encode_batch(batch)
        except (UnicodeError, TypeError, ValueError) as exc:
            # The Rust side rejects strings that are not valid unicode with a bare TypeError.
            index = _first_invalid_unicode(batch)
            if index is None:
                raise
            raise InvalidInputError(
                f"texts[{index}] is not valid unicode (it holds a lone surrogate)"
            ) from exc
        return [encoding.ids for encoding in encodings]

    def pad(self, ids: Sequence[Sequence[int]]) -> npt.NDArray[np.int64]:
        """Stack id lists into an int64 array ``[len(ids), longest]``, zero-padded on the right.

        The width is the longest list of *this* batch, not ``context_length``: the padding
        (0) comes after the end token, which the causal text tower pools at.
        """
        longest = max((len(row) for row in ids), default=0)
        out = np.zeros((len(ids), longest), dtype=np.int64)
        for i, row in enumerate(ids):
            out[i, : len(row)] = row
        return out

    def __call__(self, texts: Sequence[str]) -> npt.NDArray[np.int64]:
        """Encode ``texts`` and pad them: an int64 array ``[len(texts), longest]``."""
        return self.pad(self.encode(texts))

    def __repr__(self) -> str:
        return f"ClipTokenizer(context_length={self.context_length})"


def _check_texts(texts: Sequence[str]) -> list[str]:
    """The texts as a list, or InvalidInputError naming the first item that is no ``str``."""
    if isinstance(texts, str):
        raise InvalidInputError("texts must be a sequence of strings, not a single str")
    try:
        batch = list(texts)
    except TypeError:
        raise InvalidInputError(
            f"texts must be a sequence of strings, got {type(texts).__name__}"
        ) from None
    for index, text in enumerate(batch):
        if not isinstance(text, str):
            raise InvalidInputError(f"texts[{index}] must be a str, got {type(text).__name__}")
    return batch


def _first_invalid_unicode(batch: list[str]) -> int | None:
    """Index of the first text that cannot be encoded as UTF-8 (a lone surrogate), if any."""
    for index, text in enumerate(batch):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return index
    return None


def load_tokenizer(context_length: int = CONTEXT_LENGTH) -> ClipTokenizer:
    """The process-wide :class:`ClipTokenizer` for ``context_length`` (built once, cached)."""
    return _cached_tokenizer(context_length)


@functools.lru_cache(maxsize=8)
def _cached_tokenizer(context_length: int) -> ClipTokenizer:
    return ClipTokenizer(context_length)


def write_hf_tokenizer_files(directory: Path) -> None:
    """Write the tokenizer files of the ``openai/clip-vit-base-patch32`` repo into ``directory``.

    Writes ``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` and
    ``special_tokens_map.json`` (created with their parents if missing), so that
    ``transformers.CLIPTokenizer.from_pretrained(directory)`` loads CLIP's tokenizer. Used by
    test-model builders and as the reference of the parity test.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = _vocab_and_merges()
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (directory / "merges.txt").write_text(merges_text, encoding="utf-8")

    def added_token(content: str) -> dict[str, object]:
        return {
            "content": content,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": True,
        }

    special_tokens_map: dict[str, object] = {
        "bos_token": added_token(BOS_TOKEN),
        "eos_token": added_token(EOS_TOKEN),
        "unk_token": added_token(EOS_TOKEN),
        "pad_token": EOS_TOKEN,
    }
    tokenizer_config: dict[str, object] = {
        "unk_token": {**added_token(EOS_TOKEN), "__type": "AddedToken"},
        "bos_token": {**added_token(BOS_TOKEN), "__type": "AddedToken"},
        "eos_token": {**added_token(EOS_TOKEN), "__type": "AddedToken"},
        "pad_token": EOS_TOKEN,
        "add_prefix_space": False,
        "errors": "replace",
        "do_lower_case": True,
        "name_or_path": "openai/clip-vit-base-patch32",
        "model_max_length": CONTEXT_LENGTH,
        "special_tokens_map_file": "./special_tokens_map.json",
        "tokenizer_class": "CLIPTokenizer",
    }
    (directory / "special_tokens_map.json").write_text(
        json.dumps(special_tokens_map, indent=2) + "\n", encoding="utf-8"
    )
    (directory / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8"
    )
