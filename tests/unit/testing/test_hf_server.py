"""The loopback Hub server against the real huggingface_hub client.

huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE when it is imported, so every
client call runs in a fresh subprocess with its own environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from clipserve.testing.hf_server import ServedRequest, serve_repos

REPO_ID = "test-org/tiny"
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"hello": "hub"}\n')
    (root / "sub" / "nested.txt").write_text("nested file\n")
    (root / "empty.txt").write_bytes(b"")
    # A suffix the Hub stores with Git LFS: served with X-Linked-Etag / X-Linked-Size.
    (root / "weights.safetensors").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    return root


@pytest.fixture
def hub(repo_dir: Path) -> Iterator[tuple[str, list[ServedRequest]]]:
    log: list[ServedRequest] = []
    with serve_repos({REPO_ID: repo_dir}, revision_sha=SHA, log=log) as url:
        yield url, log


def run_client(code: str, url: str, hf_home: Path, **env: str) -> dict[str, object]:
    """Run ``code`` (which prints one JSON line last) with huggingface_hub pointed at ``url``."""
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))
    }
    environment = {
        **inherited,
        "HF_ENDPOINT": url,
        "HF_HOME": str(hf_home),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        **env,
    }
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


SNAPSHOT = """
import json
from huggingface_hub import snapshot_download
print(json.dumps({"path": snapshot_download("test-org/tiny")}))
"""

EXPECT_ERROR = """
import json
from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
)
try:
    {call}
except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError) as exc:
    print(json.dumps({{"error": type(exc).__name__,
                       "entry": isinstance(exc, EntryNotFoundError),
                       "repo": isinstance(exc, RepositoryNotFoundError),
                       "revision": isinstance(exc, RevisionNotFoundError)}}))
else:
    print(json.dumps({{"error": None}}))
"""


def downloads(log: list[ServedRequest]) -> list[str]:
    """Files whose content was fetched (``GET /{repo}/resolve/{revision}/{file}``)."""
    return sorted(r.path.split("/resolve/", 1)[1].split("/", 1)[1] for r in log if r.is_download)


def test_snapshot_download_fetches_every_file_byte_identical(
    hub: tuple[str, list[ServedRequest]], repo_dir: Path, tmp_path: Path
) -> None:
    url, log = hub
    result = run_client(SNAPSHOT, url, tmp_path / "hf")
    snapshot = Path(str(result["path"]))
    assert snapshot.name == SHA
    expected = sorted(
        p.relative_to(repo_dir).as_posix() for p in repo_dir.rglob("*") if p.is_file()
    )
    got = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())
    assert got == expected
    for name in expected:
        assert (snapshot / name).read_bytes() == (repo_dir / name).read_bytes(), name
    # An empty file needs no GET: the client creates it from the HEAD's Content-Length 0.
    assert downloads(log) == [name for name in expected if name != "empty.txt"]
    assert all(r.status < 400 for r in log)


def test_second_call_resolves_from_cache(
    hub: tuple[str, list[ServedRequest]], tmp_path: Path
) -> None:
    url, log = hub
    first = run_client(SNAPSHOT, url, tmp_path / "hf")
    served_first = len(log)

    offline = run_client(SNAPSHOT, url, tmp_path / "hf", HF_HUB_OFFLINE="1")
    assert offline["path"] == first["path"]
    assert len(log) == served_first, "an offline call must not reach the server"

    online = run_client(SNAPSHOT, url, tmp_path / "hf")
    assert online["path"] == first["path"]
    assert not [r for r in log[served_first:] if r.is_download], "cached files were re-downloaded"


@pytest.mark.parametrize(
    ("call", "kind"),
    [
        ('snapshot_download("test-org/missing")', "repo"),
        ('hf_hub_download("test-org/missing", "config.json")', "repo"),
        ('hf_hub_download("test-org/tiny", "no-such-file.txt")', "entry"),
        ('snapshot_download("test-org/tiny", revision="no-such-branch")', "revision"),
    ],
)
def test_unknown_repo_file_and_revision_raise_hub_errors(
    hub: tuple[str, list[ServedRequest]], tmp_path: Path, call: str, kind: str
) -> None:
    url, _ = hub
    result = run_client(EXPECT_ERROR.format(call=call), url, tmp_path / "hf")
    assert result["error"] is not None
    assert result[kind] is True, result


def test_hf_hub_download_of_one_file_by_branch(
    hub: tuple[str, list[ServedRequest]], repo_dir: Path, tmp_path: Path
) -> None:
    url, log = hub
    code = (
        "import json; from huggingface_hub import hf_hub_download; "
        'print(json.dumps({"path": hf_hub_download("test-org/tiny", "sub/nested.txt")}))'
    )
    result = run_client(code, url, tmp_path / "hf")
    path = Path(str(result["path"]))
    assert path.read_bytes() == (repo_dir / "sub" / "nested.txt").read_bytes()
    assert path.parent.parent.name == SHA
    assert downloads(log) == ["sub/nested.txt"]


def test_resolve_headers_and_byte_ranges(
    hub: tuple[str, list[ServedRequest]], repo_dir: Path
) -> None:
    url, log = hub
    content = (repo_dir / "weights.safetensors").read_bytes()
    file_url = f"{url}/{REPO_ID}/resolve/main/weights.safetensors"

    with urllib.request.urlopen(urllib.request.Request(file_url, method="HEAD")) as head:
        assert head.headers["X-Repo-Commit"] == SHA
        assert head.headers["X-Linked-Size"] == str(len(content))
        assert head.headers["Content-Length"] == str(len(content))
        assert head.headers["ETag"] == head.headers["X-Linked-Etag"]
        assert len(head.headers["ETag"].strip('"')) == 64  # sha256 of an LFS file

    ranged = urllib.request.Request(file_url, headers={"Range": "bytes=100-199"})
    with urllib.request.urlopen(ranged) as part:
        assert part.status == 206
        assert part.headers["Content-Range"] == f"bytes 100-199/{len(content)}"
        assert part.read() == content[100:200]

    suffix = urllib.request.Request(file_url, headers={"Range": "bytes=-10"})
    with urllib.request.urlopen(suffix) as tail:
        assert tail.read() == content[-10:]

    assert [r.range for r in log if r.method == "GET"] == ["bytes=100-199", "bytes=-10"]


def test_model_info_and_tree_routes(hub: tuple[str, list[ServedRequest]]) -> None:
    url, _ = hub
    with urllib.request.urlopen(f"{url}/api/models/{REPO_ID}?blobs=true") as response:
        info = json.load(response)
    assert info["sha"] == SHA
    siblings = {s["rfilename"]: s for s in info["siblings"]}
    assert set(siblings) == {"config.json", "empty.txt", "sub/nested.txt", "weights.safetensors"}
    assert siblings["weights.safetensors"]["lfs"]["size"] == siblings["weights.safetensors"]["size"]
    assert "lfs" not in siblings["config.json"]

    with urllib.request.urlopen(f"{url}/api/models/{REPO_ID}/tree/main") as response:
        top = {(e["type"], e["path"]) for e in json.load(response)}
    assert ("directory", "sub") in top
    assert ("file", "sub/nested.txt") not in top
    with urllib.request.urlopen(f"{url}/api/models/{REPO_ID}/tree/main?recursive=true") as response:
        assert ("file", "sub/nested.txt") in {(e["type"], e["path"]) for e in json.load(response)}
