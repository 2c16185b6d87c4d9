"""Tests of the CLIP text tokenizer (clipserve.models.tokenizer).

The reference is Hugging Face's CLIPTokenizer (and CLIPTokenizerFast where it is a distinct
class), loaded from the files ``write_hf_tokenizer_files`` writes, so no hub is needed. A few
ids are also pinned to the values OpenAI's original ``clip.simple_tokenizer`` gives, and the
known differences from it are pinned too.

Checked against transformers 5.23 (CLIPTokenizer: equal except case variants of the literal
``<|endoftext|>``, see test_parity_with_transformers) and 4.57 (CLIPTokenizerFast: equal on
every text; the pure-Python CLIPTokenizer is reported as an expected failure).
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipserve.errors import InvalidInputError
from clipserve.models import tokenizer as tokenizer_module
from clipserve.models.tokenizer import (
    CONTEXT_LENGTH,
    ClipTokenizer,
    load_tokenizer,
    write_hf_tokenizer_files,
)

BOS = 49406
EOS = 49407

# --------------------------------------------------------------------------------------------
# Test strings
# --------------------------------------------------------------------------------------------


def _split(words: str) -> list[str]:
    """Whitespace-separated fragments (kept as one string per pool for readability)."""
    return words.split()


_WORDS = _split(
    "a photo of the cat dog on in with and diagram painting sketch red blue green tiny huge "
    "running jumping beautiful sunset over mountains city street night portrait close-up "
    "antidisestablishmentarianism pneumonoultramicroscopic supercalifragilistic zzyzx qwxkj "
    "café naïve résumé coöperate jalapeño façade smörgåsbord straße Ελλάδα καλημέρα ΟΔΟΣ "
    "Москва привет ёжик 東京 日本語 中文字 한국어 ひらがな カタカナ مرحبا العربية שלום "
    "हिन्दी नमस्ते ภาษาไทย Ürümqi İstanbul ıi ǅ ﬁne ＦＵＬＬ１２３ ½ ² Ⅻ ٣ ๓"
)
_CONTRACTIONS = _split(
    "it's we'LL I'M they're you've she'd don't can't WON'T o'clock rock'n'roll '' 's "
    "it’s we’ll ’tis '''quoted''' Y'ALL'D"
)
_PUNCT = _split(
    "! ? . , ; : ... !!! ?!? -- — – ( ) [ ] { } <> << >> @ # $ % ^ & * _ + = | \\ / ~ ` "
    "\" ' “ ” ‘ ’ « » ¿ ¡ § ¶ † • … ‰ €100 £5 ¥ ₹ ©2024 ™ ® → ⇒ ∀x∈ℝ ≠ ≤ √2 ∞ °C"
)
_EMOJI = [
    "😀",
    "🐱",
    "👍🏽",  # skin tone modifier
    "👨‍👩‍👧‍👦",  # ZWJ family
    "🧑🏿‍🚀",  # ZWJ with modifier
    "🏳️‍🌈",  # ZWJ with variation selector
    "🇫🇷",  # regional indicators (flags)
    "🇯🇵🇺🇸",
    "🏴󠁧󠁢󠁳󠁣󠁴󠁿",  # tag sequence (Scotland)
    "1️⃣",  # keycap
    "❤️",
    "✌︎",
    "🫠",
]
_SPECIAL = [
    "<|startoftext|>",
    "<|endoftext|>",
    "<|endoftext|><|endoftext|>",
    "x<|startoftext|>y",
    "<|endoftext",
    "|endoftext|>",
    "< |endoftext| >",
]
_ENTITIES = ["&amp;", "&lt;b&gt;", "&quot;hi&quot;", "&#39;", "&#x1F600;", "&nbsp;", "&amp;amp;"]
_SPACES = [" ", "  ", "\t", "\n", "\r\n", " \t\n ", "\u00a0", "\u2003", "\u3000", "\u2028"]
_ODD = [
    "\u200b",  # zero width space (not whitespace)
    "\u200d",  # zero width joiner
    "\ufeff",  # byte order mark
    "\u0085",  # next line (C1 control, whitespace)
    "\u180e",  # Mongolian vowel separator (no longer whitespace)
    "\x00",
    "\x07",
    "\x1b[31m",
    "\x7f",
    "\ue000",  # private use
    "\U0010fffd",  # private use, astral
    "\u0378",  # unassigned
    "\ufffd",
    "e\u0301",  # NFD é
    "a\u0308\u0304",  # stacked combining marks
    "\u0301",  # lone combining mark
    "Å",  # angstrom sign, NFC -> Å
    "\u1100\u1161\u11a8",  # Hangul jamo (NFC -> 각)
    "ẞ",
    "ΣΑΣ",
]
_FRAGMENTS: list[Sequence[str]] = [
    _WORDS,
    _WORDS,
    _WORDS,
    _CONTRACTIONS,
    _PUNCT,
    _EMOJI,
    _SPECIAL,
    _ENTITIES,
    _ODD,
]

HAND_PICKED = [
    "",
    " ",
    "   \t\n  ",
    "a photo of a cat",
    "A Photo Of A CAT",
    "a diagram",
    "it's",
    "we'LL",
    "IT'S WE'LL THEY'RE I'D",
    "it’s we’ll",
    "don't stop 'til you've had enough",
    "café",
    unicodedata.normalize("NFD", "café naïve résumé"),
    unicodedata.normalize("NFC", "Ελληνικά κείμενα"),
    unicodedata.normalize("NFD", "Ελληνικά κείμενα"),
    "ΟΔΟΣ ΣΟΦΙΑΣ",
    "Привет, мир! Ёлка",
    "東京タワーの夜景",
    "中文、日本語、한국어",
    "مرحبا بالعالم",
    "שָׁלוֹם",
    "हिन्दी में लिखा",
    "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇",
    "😀😀😀",
    "👨‍👩‍👧‍👦 family",
    "🇫🇷🇩🇪🇯🇵 flags",
    "hello 👋🏽 world",
    "!!!???...---",
    "..,,;;::!!",
    "(((nested)))",
    "e-mail: john.doe@example.com, https://example.com/a?b=c&d=e#f",
    "12345 3.14159 1,000,000 2024-01-01 0x1F 1e-9 -42",
    "٣٤٥ ௫ 〇 ½",
    "word\tword\nword\r\nword",
    "a   b     c",
    "\u00a0non\u00a0breaking\u3000spaces\u2003em",
    "zero\u200bwidth\u200djoiner\ufeffbom",
    "<|startoftext|>",
    "<|endoftext|>",
    "a photo <|endoftext|> of a cat",
    "<|startoftext|>a photo of a cat<|endoftext|>",
    "<|endoftext|><|startoftext|><|endoftext|>",
    "<|endoftext",
    "&amp; &lt;b&gt;bold&lt;/b&gt; &quot;q&quot; &#39;s &#x1F600;",
    "Tom &amp; Jerry",
    "ﬁne ﬂour ＦＵＬＬＷＩＤＴＨ",
    "İstanbul ıi ß ẞ ǅ",
    "\x00\x01\x07 control \x7f chars \x1b[0m",
    "x" * 300,
    "supercalifragilisticexpialidocious" * 5,
    "!" * 200,
    "1" * 100,
    "a" + "\u0301" * 50,
    " ".join(["word"] * 500),
]


def _random_text(rng: random.Random) -> str:
    """One random text mixing words, scripts, punctuation, emoji and odd code points."""
    kind = rng.random()
    if kind < 0.05:
        # Random code points from the whole range (no surrogates, no noncharacter filter).
        return "".join(
            chr(rng.choice([rng.randrange(0x20, 0x250), rng.randrange(0x250, 0xD800)]))
            if rng.random() < 0.8
            else chr(rng.randrange(0xE000, 0x110000))
            for _ in range(rng.randrange(1, 40))
        )
    n = rng.choice([0, 1, 2, 3, 5, 8, 13, 21, 40, 90])
    parts: list[str] = []
    for _ in range(n):
        pool = rng.choice(_FRAGMENTS)
        piece = rng.choice(pool)
        case = rng.random()
        if case < 0.1:
            piece = piece.upper()
        elif case < 0.2:
            piece = piece.title()
        elif case < 0.25:
            piece = unicodedata.normalize("NFD", piece)
        parts.append(piece)
        parts.append(rng.choice(_SPACES) if rng.random() < 0.8 else "")
    if rng.random() < 0.3 and parts:
        parts.insert(0, rng.choice(_SPACES))
    return "".join(parts)


def parity_texts(count: int = 1200, seed: int = 20240617) -> list[str]:
    """Hand-picked cases followed by ``count`` seeded random texts."""
    rng = random.Random(seed)
    return [*HAND_PICKED, *(_random_text(rng) for _ in range(count))]


# --------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok() -> ClipTokenizer:
    return load_tokenizer()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("hf-clip-tokenizer")
    write_hf_tokenizer_files(directory)
    return directory


def _load_reference(class_name: str, hf_dir: Path) -> Any:
    """transformers' ``class_name`` loaded from ``hf_dir``, or a skip when it is not distinct."""
    transformers = pytest.importorskip("transformers")
    cls = getattr(transformers, class_name, None)
    if cls is None:
        pytest.skip(f"transformers {transformers.__version__} has no {class_name}")
    if class_name == "CLIPTokenizerFast" and cls is transformers.CLIPTokenizer:
        pytest.skip(
            f"in transformers {transformers.__version__} CLIPTokenizerFast is CLIPTokenizer: "
            "covered by the CLIPTokenizer case"
        )
    with pytest.MonkeyPatch.context() as mp:  # a local directory: nothing may be fetched
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        return cls.from_pretrained(str(hf_dir))


_SPECIAL_LITERAL = re.compile(r"<\|(?:startoftext|endoftext)\|>", re.IGNORECASE)


def _transformers_version() -> str:
    return str(pytest.importorskip("transformers").__version__)


def _has_case_variant_special(text: str) -> bool:
    return any(m.group(0) != m.group(0).lower() for m in _SPECIAL_LITERAL.finditer(text))


def _lower_special_literals(text: str) -> str:
    return _SPECIAL_LITERAL.sub(lambda m: m.group(0).lower(), text)


def _describe(
    tok: ClipTokenizer, mismatches: Sequence[tuple[str, list[int], list[int]]], limit: int = 10
) -> str:
    lines = []
    for text, ours, theirs in mismatches[:limit]:
        at = next(
            (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
            min(len(ours), len(theirs)),
        )
        window = slice(max(0, at - 2), at + 6)
        lines.append(
            f"  {text[:160]!r}\n"
            f"    first difference at id {at}: ours {ours[window]} "
            f"{[tok.backend.id_to_token(i) for i in ours[window]]}\n"
            f"    {'':>28}reference {theirs[window]} "
            f"{[tok.backend.id_to_token(i) for i in theirs[window]]}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------


def test_vocab_size_and_special_ids(tok: ClipTokenizer) -> None:
    assert tok.vocab_size == 49408
    assert tok.bos_id == BOS == 49406
    assert tok.eos_id == EOS == 49407
    assert tok.context_length == CONTEXT_LENGTH == 77
    backend = tok.backend
    assert backend.get_vocab_size(with_added_tokens=True) == 49408
    assert backend.token_to_id("<|startoftext|>") == BOS
    assert backend.token_to_id("<|endoftext|>") == EOS
    # OpenAI's order: byte characters, the same with </w>, then merges ("i n" first).
    assert backend.id_to_token(0) == "!"
    assert backend.id_to_token(255) == "Ń"  # byte 0xAD, the last one remapped
    assert backend.id_to_token(256) == "!</w>"
    assert backend.id_to_token(512) == "in"
    assert backend.id_to_token(49405) == "jekyll</w>"  # the 48,894th merge


def test_written_hf_files(hf_dir: Path) -> None:
    vocab = json.loads((hf_dir / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 49408
    assert sorted(vocab.values()) == list(range(49408))
    assert vocab["<|startoftext|>"] == BOS and vocab["<|endoftext|>"] == EOS
    merges = (hf_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2"
    assert len(merges) == 1 + 49152 - 256 - 2
    assert merges[1] == "i n"
    config = json.loads((hf_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "CLIPTokenizer"
    assert config["model_max_length"] == 77
    special = json.loads((hf_dir / "special_tokens_map.json").read_text(encoding="utf-8"))
    assert special["bos_token"]["content"] == "<|startoftext|>"
    assert special["eos_token"]["content"] == "<|endoftext|>"


# --------------------------------------------------------------------------------------------
# Parity with Hugging Face
# --------------------------------------------------------------------------------------------


def test_parity_texts_are_varied() -> None:
    texts = parity_texts()
    assert len(texts) >= 1000 + len(HAND_PICKED)
    assert len(set(texts)) > 1000
    assert texts == parity_texts()  # seeded


@pytest.mark.parametrize("class_name", ["CLIPTokenizer", "CLIPTokenizerFast"])
def test_parity_with_transformers(class_name: str, tok: ClipTokenizer, hf_dir: Path) -> None:
    """Same ids as transformers' CLIP tokenizer on every text, with one explained exception.

    transformers 5 builds its CLIPTokenizer from these files with ``<|endoftext|>`` matched
    case-sensitively (its string-form pad token re-registers it un-normalized) while
    ``<|startoftext|>`` is matched in the lower-cased text. OpenAI's tokenizer, transformers
    4's CLIPTokenizerFast and clipserve match both case-insensitively. Texts that differ
    *only* for that reason must give the reference's ids once the literal is lower-cased;
    every other difference fails.
    """
    reference = _load_reference(class_name, hf_dir)
    texts = parity_texts()
    ours = tok.encode(texts)
    theirs = reference(texts, truncation=True, max_length=CONTEXT_LENGTH)["input_ids"]
    assert len(theirs) == len(ours)
    mismatches = [(t, a, list(b)) for t, a, b in zip(texts, ours, theirs, strict=True) if a != b]
    if not getattr(reference, "is_fast", True):
        # transformers 4.x's pure-Python CLIPTokenizer cleans text its own way first (ftfy
        # when installed, else BERT's BasicTokenizer, which splits CJK characters and drops
        # control characters) and lower-cases with Python (final sigma "ς"), so it does not
        # even agree with its own CLIPTokenizerFast. Reported, not asserted.
        if mismatches:
            pytest.xfail(
                f"pure-Python {class_name} differs on {len(mismatches)}/{len(texts)} texts "
                f"(its own CLIPTokenizerFast is the Rust reference):\n"
                + _describe(tok, mismatches, 3)
            )
        return
    eos_case_sensitive = reference("<|ENDOFTEXT|>")["input_ids"] != [BOS, EOS, EOS]
    explained: list[str] = []
    unexplained: list[tuple[str, list[int], list[int]]] = []
    for text, a, b in mismatches:
        if eos_case_sensitive and _has_case_variant_special(text):
            lowered = _lower_special_literals(text)
            again = reference([lowered], truncation=True, max_length=CONTEXT_LENGTH)
            if again["input_ids"][0] == a:
                explained.append(text)
                continue
        unexplained.append((text, a, b))
    assert not unexplained, (
        f"{len(unexplained)} of {len(texts)} texts differ from {class_name}; the first:\n"
        + _describe(tok, unexplained)
    )
    if explained:
        warnings.warn(
            f"transformers {_transformers_version()} {class_name} matches '<|endoftext|>' "
            f"case-sensitively: {len(explained)} of "
            f"{len(texts)} texts differ only there (clipserve matches it case-insensitively "
            "like OpenAI's CLIP)",
            stacklevel=1,
        )


# Ids from OpenAI's original tokenizer (clip/simple_tokenizer.py with ftfy 6.3, wrapped as
# clip.tokenize does) for texts on which all three agree.
OPENAI_IDS = {
    "a photo of a cat": [BOS, 320, 1125, 539, 320, 2368, EOS],
    "A Photo Of A CAT": [BOS, 320, 1125, 539, 320, 2368, EOS],
    "it's we'LL": [BOS, 585, 568, 649, 1342, EOS],
    "<|ENDOFTEXT|> hi <|StartOfText|>": [BOS, EOS, 1883, BOS, EOS],
    unicodedata.normalize("NFD", "café naïve"): [BOS, 15304, 1097, 35689, 563, EOS],
    "e-mail: john.doe@example.com 12345": [
        *(BOS, 324, 268, 2614, 281, 1742, 269, 13296, 287, 6228, 269, 2464),
        *(272, 273, 274, 275, 276, EOS),
    ],
    "  a\t\tb\n\nc  ": [BOS, 320, 321, 322, EOS],
    "Привет, мир! 東京タワー 🇫🇷 👨‍👩‍👧": [
        *(BOS, 26302, 16370, 29503, 110, 22176, 141, 480, 267, 38018, 16701, 141, 478),
        *(256, 48338, 21078, 105, 34941, 2429, 107, 30391, 16223, 25023, 26304, 964, 356, EOS),
    ],
}


@pytest.mark.parametrize("text", list(OPENAI_IDS))
def test_matches_openai_ids(tok: ClipTokenizer, text: str) -> None:
    assert tok.encode([text])[0] == OPENAI_IDS[text]


# Where OpenAI's original differs, clipserve follows Hugging Face (pinned here so that a change
# is deliberate). OpenAI's ids in the comments.
HF_NOT_OPENAI_IDS = {
    # Python's str.lower() gives the final sigma "ς" (id 480); Rust lower-cases per character.
    "ΟΔΟΣ": [BOS, 138, 123, 138, 112, 138, 123, 139, 481, EOS],  # OpenAI: ... 139, 480
    # OpenAI unescapes HTML entities (html.unescape twice): "tom & jerry".
    "Tom &amp; Jerry": [BOS, 2435, 261, 6259, 282, 9164, EOS],  # OpenAI: 2435, 261, 9164
    # ftfy uncurls quotes ("it's"), expands ligatures ("fine") and narrows full-width forms.
    "it’s": [BOS, 585, 728, 503, 338, EOS],  # OpenAI: 585, 568
    "ﬁne": [BOS, 171, 105, 223, 1422, EOS],  # OpenAI: 3797
    "ＦＵＬＬ": [BOS, 171, 121, 228, 171, 121, 243, 171, 121, 234, 171, 121, 490, EOS],  # 1476
    # OpenAI's regex lets a punctuation run swallow "<|" of a following special token.
    "x;<|endoftext|>": [BOS, 343, 282, EOS, EOS],  # OpenAI: 343, 26, 27, 347, 40786, ...
}


@pytest.mark.parametrize("text", list(HF_NOT_OPENAI_IDS))
def test_known_differences_from_openai(tok: ClipTokenizer, text: str) -> None:
    assert tok.encode([text])[0] == HF_NOT_OPENAI_IDS[text]


# --------------------------------------------------------------------------------------------
# Encoding, truncation, padding
# --------------------------------------------------------------------------------------------


def test_empty_string(tok: ClipTokenizer) -> None:
    assert tok.encode([""]) == [[BOS, EOS]]
    assert tok.encode(["  \t\n "]) == [[BOS, EOS]]
    assert tok.encode([]) == []


def test_truncation_keeps_end_token(tok: ClipTokenizer) -> None:
    long_text = " ".join(f"word{i % 10}" for i in range(500))
    [ids] = tok.encode([long_text])
    assert len(ids) == 77
    assert ids[0] == BOS and ids[-1] == EOS
    assert EOS not in ids[:-1]
    assert ids[1:-1] == tok.encode([long_text[:400]])[0][1:76]


def test_truncation_boundary(tok: ClipTokenizer) -> None:
    # "a" is one token: 75 of them fill the context exactly, a 76th is cut.
    assert tok.encode([" ".join(["a"] * 75)])[0] == [BOS, *([320] * 75), EOS]
    assert tok.encode([" ".join(["a"] * 76)])[0] == [BOS, *([320] * 75), EOS]


def test_custom_context_length() -> None:
    short = load_tokenizer(8)
    assert short.context_length == 8
    assert short.encode(["one two three four five six seven eight"])[0] == [
        BOS,
        *load_tokenizer().encode(["one two three four five six"])[0][1:-1],
        EOS,
    ]
    assert load_tokenizer().context_length == 77  # not affected
    with pytest.raises(ValueError):
        ClipTokenizer(1)


def test_pad_to_longest_in_batch(tok: ClipTokenizer) -> None:
    batch = tok(["a cat", "a photo of a dog", ""])
    assert batch.dtype == np.int64
    assert batch.shape == (3, 7)  # the longest text, not 77
    assert batch[0].tolist() == [BOS, 320, 2368, EOS, 0, 0, 0]
    assert batch[1].tolist() == [BOS, 320, 1125, 539, 320, 1929, EOS]
    assert batch[2].tolist() == [BOS, EOS, 0, 0, 0, 0, 0]


def test_short_prompts_give_short_arrays(tok: ClipTokenizer) -> None:
    assert tok(["cat"]).shape == (1, 3)
    assert tok(["cat", "dog"]).shape == (2, 3)
    assert tok([" ".join(["word"] * 500), "cat"]).shape == (2, 77)


def test_pad_direct(tok: ClipTokenizer) -> None:
    padded = tok.pad([[BOS, 5, EOS], [BOS, EOS]])
    assert padded.dtype == np.int64
    assert padded.tolist() == [[BOS, 5, EOS], [BOS, EOS, 0]]
    empty = tok.pad([])
    assert empty.shape == (0, 0) and empty.dtype == np.int64


def test_call_is_encode_then_pad(tok: ClipTokenizer) -> None:
    texts = parity_texts(50, seed=7)
    np.testing.assert_array_equal(tok(texts), tok.pad(tok.encode(texts)))


# --------------------------------------------------------------------------------------------
# Invalid input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "type_name"),
    [(None, "NoneType"), (3, "int"), (b"bytes", "bytes"), (["nested"], "list")],
)
def test_non_string_item_raises(tok: ClipTokenizer, item: object, type_name: str) -> None:
    with pytest.raises(InvalidInputError, match=rf"texts\[1\].*{type_name}"):
        tok.encode(["fine", item])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError):
        tok(["fine", item])  # type: ignore[list-item]


def test_single_string_raises(tok: ClipTokenizer) -> None:
    with pytest.raises(InvalidInputError, match="not a single str"):
        tok.encode("a photo of a cat")


def test_lone_surrogate_raises(tok: ClipTokenizer) -> None:
    with pytest.raises(InvalidInputError, match=r"texts\[2\]"):
        tok.encode(["ok", "fine", "bad \ud800 surrogate"])


# --------------------------------------------------------------------------------------------
# Caching and build time
# --------------------------------------------------------------------------------------------


def test_load_tokenizer_is_cached() -> None:
    assert load_tokenizer() is load_tokenizer()
    assert load_tokenizer() is load_tokenizer(CONTEXT_LENGTH)
    assert load_tokenizer(16) is not load_tokenizer()


def test_a_fresh_build_gives_openai_ids() -> None:
    tokenizer_module._vocab_and_merges.cache_clear()
    fresh = ClipTokenizer()
    assert fresh.encode(["a photo of a cat"]) == [OPENAI_IDS["a photo of a cat"]]
