"""atheris target: request bodies on every native and compat route of the real app.

The first byte picks a route of :data:`seeds.ROUTES` (``/v1/encode`` three ways, rank,
classify, index search, and the BentoML, clip-as-service, photofield, immich, OpenAI and
clip-retrieval routes); the rest is the body, sent as JSON, as a multipart form or as a
raw image, to the app in process (tiny test model). Any status below 500 is an answer;
a 5xx, or an exception no handler turned into an answer, is a crash.

Run: ``python fuzz/fuzz_compat.py -runs=2000 CORPUS_DIR`` (seeds: ``fuzz/seeds.py compat``).
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["clipserve"]):
    import fuzzkit
    from seeds import BOUNDARY, ROUTES

_CONTENT_TYPES = {
    "json": "application/json",
    "form": f"multipart/form-data; boundary={BOUNDARY}",
    "image": "image/png",
}
_APP = fuzzkit.served_app()
CLIENT = _APP.__enter__()  # kept open for the life of the process
MODEL = fuzzkit.served_model(CLIENT)


def target(data: bytes) -> None:
    """One run: POST the body ``data`` spells to the route it picks."""
    if not data:
        return
    route, kind = ROUTES[data[0] % len(ROUTES)]
    body = fuzzkit.with_model(data[1:], MODEL)
    response = CLIENT.post(route, content=body, headers={"content-type": _CONTENT_TYPES[kind]})
    fuzzkit.check_answer(route, response.status_code, response.text)


if __name__ == "__main__":
    fuzzkit.run(target)
