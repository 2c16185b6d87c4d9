"""Every atheris target of ``fuzz/`` runs, briefly, under ``scripts/fuzz.py``: no crash.

A CI-sized run (:data:`RUNS` executions per target, fixed libFuzzer seed): enough to replay
each seed corpus — valid inputs of every kind plus decompression bombs, truncated files and
deep JSON — and mutate from it, so that a regression on any input surface fails here. Long
campaigns are ``python scripts/fuzz.py --runs 100000``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNS = 400
TARGETS = {"image", "tokenizer", "filters", "datauri", "compat"}


def test_every_target_runs_without_a_crash(tiny_clip_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris has no build for this Python (dev extra)")
    # tiny_clip_dir: the app targets load the tiny test model, built once by that fixture.
    artifacts = tmp_path / "artifacts"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "fuzz.py"),
            f"--runs={RUNS}",
            f"--artifacts={artifacts}",
            "--target-timeout=600",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    report: dict[str, Any] = json.loads(done.stdout)
    by_name = {entry["target"]: entry for entry in report["targets"]}
    assert set(by_name) == TARGETS
    for name, entry in by_name.items():
        assert entry["crashes"] == [], f"{name} crashed:\n{entry['error']}"
        assert entry["error"] is None and entry["exit_code"] == 0, f"{name}: {entry['error']}"
        assert entry["executions"] >= RUNS, (name, entry["executions"])
        assert entry["seeds"] > 0 and entry["coverage"], (name, entry)
    assert report["ok"] and done.returncode == 0, done.stderr[-3000:]
    assert not any(artifacts.iterdir())
