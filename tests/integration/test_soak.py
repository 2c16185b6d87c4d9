"""``bench/soak.py``, short: every kind of request under mixed load, clients that leave
mid-request among them, and no unexpected error.

The benchmark's memory target (RSS growth after warm-up below 5 %) is not asserted here: over
20 seconds the allocator's pools are still growing to their working size and a single batch
of images moves RSS by more than the target, so the figure says nothing about leaks. The
10-minute run (``python bench/soak.py``) is the one that checks it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).parents[2] / "bench" / "soak.py"
DURATION_S = 20


def test_a_short_soak_serves_every_kind_without_unexpected_errors(
    tiny_clip_dir: Path, clipserve_cache: Path
) -> None:
    command = [sys.executable, str(SOAK), "--duration", str(DURATION_S), "--warmup", "5"]
    command += ["--window", "5", "--rss-span", "5", "--model", str(tiny_clip_dir)]
    command += ["--cache", str(clipserve_cache)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode in (0, 1), run.stderr[-5000:]
    report = json.loads(run.stdout)
    targets = report["targets"]
    if run.returncode == 1:  # only the memory target may be what was missed (see above)
        assert (
            targets["rss_growth_after_warmup_pct"] >= targets["rss_growth_after_warmup_target_pct"]
        ), targets
    assert targets["unexpected_errors"] == 0, report["errors"]
    assert targets["kinds_not_served"] == [], report["requests"]
    assert all(count >= 1 for count in report["requests"].values()), report["requests"]
    assert not any(targets["left_in_flight"].values()), targets["left_in_flight"]
    # The server saw the clients leave: HTTP requests it logged as 499, streams cancelled.
    counts = report["server_counts"]
    assert counts.get("http /v1/encode 499", 0) >= 1, counts
    assert counts.get("grpc EncodeStream CANCELLED", 0) >= 1, counts
    assert not [key for key in counts if key.startswith("http") and key.endswith(" 500")]
    # Latency is reported per kind and window, for every kind that is not an abort.
    for kind, windows in report["latency"].items():
        assert not kind.startswith("abort_")
        assert windows and all(window["p50_ms"] <= window["p99_ms"] for window in windows)
    assert set(report["latency"]) == {k for k in report["requests"] if not k.startswith("abort_")}
