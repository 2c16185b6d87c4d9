"""atheris target: any unicode text through CLIP's tokenizer.

Up to three texts of any code points (lone surrogates included) must tokenize to
``<|startoftext|> ... <|endoftext|>`` within the context length, every id in the
vocabulary — or, for a text holding a lone surrogate, raise
:class:`~clipserve.errors.InvalidInputError` naming it.

Run: ``python fuzz/fuzz_tokenizer.py -runs=2000 CORPUS_DIR`` (seeds: ``fuzz/seeds.py tokenizer``).
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["clipserve"]):
    import fuzzkit

    from clipserve.errors import InvalidInputError
    from clipserve.models.tokenizer import CONTEXT_LENGTH, load_tokenizer

TOKENIZER = load_tokenizer()


def _texts(data: bytes) -> list[str]:
    provider = atheris.FuzzedDataProvider(data)
    count = provider.ConsumeIntInRange(1, 3)
    texts = [provider.ConsumeUnicode(provider.ConsumeIntInRange(0, 4096)) for _ in range(count)]
    return [str(text) for text in texts]


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(char) <= 0xDFFF for char in text)


def target(data: bytes) -> None:
    """One run: tokenize the texts ``data`` spells and check every id row."""
    texts = _texts(data)
    bad = next((index for index, text in enumerate(texts) if _has_surrogate(text)), None)
    try:
        rows = TOKENIZER.encode(texts)
    except InvalidInputError as exc:
        if bad is None or f"texts[{bad}]" not in str(exc):
            raise
        return
    if bad is not None:
        raise AssertionError(f"texts[{bad}] holds a lone surrogate and was tokenized")
    for ids in rows:
        if not 2 <= len(ids) <= CONTEXT_LENGTH:
            raise AssertionError(f"{len(ids)} ids")
        if ids[0] != TOKENIZER.bos_id or ids[-1] != TOKENIZER.eos_id:
            raise AssertionError(f"ids do not start and end with the specials: {ids}")
        if not all(0 <= i < TOKENIZER.vocab_size for i in ids):
            raise AssertionError(f"id out of the vocabulary: {ids}")


if __name__ == "__main__":
    fuzzkit.run(target)
