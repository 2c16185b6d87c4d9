"""atheris target: base64 and data-URI image strings through ``/v1/encode``.

The input (as text, invalid UTF-8 kept as lone surrogates) is sent as one input of a JSON
``/v1/encode`` body — as a plain string (a data URI is an image, anything else a text) when
its first byte is even, as ``{"image": ...}`` (base64 or a data URI) when odd — to the app in
process. Any status below 500 is an answer; a 5xx or an unhandled exception is a crash.

Run: ``python fuzz/fuzz_datauri.py -runs=2000 CORPUS_DIR`` (seeds: ``fuzz/seeds.py datauri``).
"""

from __future__ import annotations

import json

import atheris

with atheris.instrument_imports(include=["clipserve"]):
    import fuzzkit

_APP = fuzzkit.served_app()
CLIENT = _APP.__enter__()  # kept open for the life of the process


def target(data: bytes) -> None:
    """One run: encode the image string ``data`` spells."""
    text = data.decode("utf-8", "surrogateescape")
    item = text if not data or data[0] % 2 == 0 else {"image": text}
    body = json.dumps({"inputs": [item]}).encode()
    response = CLIENT.post("/v1/encode", content=body, headers={"content-type": "application/json"})
    fuzzkit.check_answer("/v1/encode", response.status_code, response.text)


if __name__ == "__main__":
    fuzzkit.run(target)
