"""Run every atheris target of ``fuzz/`` for a bounded number of executions; print JSON.

Each target runs in a subprocess of its own, on a fresh corpus seeded by ``fuzz/seeds.py``
in a temporary directory, with libFuzzer's memory limit and per-input timeout, and a fixed
``-seed`` (so a CI run is repeatable). The JSON report gives, per target, the executions,
seconds, libFuzzer's coverage and feature counts, the corpus size, and the crashes found
(files under ``--artifacts`` that replay one: ``python fuzz/fuzz_<target>.py FILE``). The
exit status is 1 if any target crashed or failed to run.

Usage::

    python scripts/fuzz.py                       # every target, 2,000 executions each
    python scripts/fuzz.py --runs 20000 --targets image,compat --artifacts fuzz-crashes
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FUZZ_DIR = ROOT / "fuzz"
sys.path.insert(0, str(FUZZ_DIR))  # fuzz/ is not a package: its scripts import each other

from seeds import write_seeds  # noqa: E402

#: The targets, each ``fuzz/fuzz_<name>.py``; the order is the run order.
TARGETS = ("image", "tokenizer", "filters", "datauri", "compat")
#: Longest input libFuzzer generates, per target (images need room for real files).
MAX_LEN = {"image": 8192, "tokenizer": 4096, "filters": 2048, "datauri": 8192, "compat": 8192}
_ARTIFACT = re.compile(r"^(crash|oom|timeout|leak|slow-unit)-")
# libFuzzer's status lines: "#2000  DONE   cov: 1234 ft: 5678 corp: 90/12Kb ..."
_STATUS = re.compile(r"^#(\d+)\s+(\w+)\s+(.*)$")
_FIELD = re.compile(r"(cov|ft|corp|exec/s|rss): (\d+)")


@dataclass
class TargetReport:
    """What one target's run found."""

    target: str
    executions: int = 0
    seconds: float = 0.0
    coverage: int | None = None
    features: int | None = None
    corpus: int | None = None
    seeds: int = 0
    exit_code: int | None = None
    crashes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """No crash, and libFuzzer ran to its end."""
        return not self.crashes and self.exit_code == 0 and self.error is None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the targets, print the JSON report; 1 if anything crashed."""
    args = _parser().parse_args(argv)
    targets = [name.strip() for name in args.targets.split(",") if name.strip()]
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        print(f"unknown targets {unknown}; choose from {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    artifacts = Path(args.artifacts or tempfile.mkdtemp(prefix="clipserve-fuzz-crashes-"))
    with tempfile.TemporaryDirectory(prefix="clipserve-fuzz-run-") as scratch:
        reports = [run_target(name, args, Path(scratch) / name, artifacts) for name in targets]
    if not args.artifacts and not any(artifacts.iterdir()):
        artifacts.rmdir()  # nothing to keep
    summary: dict[str, Any] = {
        "runs_per_target": args.runs,
        "ok": all(report.ok for report in reports),
        "targets": [{**asdict(report), "ok": report.ok} for report in reports],
    }
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


def run_target(name: str, args: argparse.Namespace, work: Path, artifacts: Path) -> TargetReport:
    """Seed a fresh corpus for ``name``, run its script under libFuzzer, parse the outcome."""
    report = TargetReport(name)
    corpus, temp = work / "corpus", work / "tmp"
    temp.mkdir(parents=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    report.seeds = write_seeds(name, corpus)
    before = set(artifacts.iterdir())
    command = [
        sys.executable,
        str(FUZZ_DIR / f"fuzz_{name}.py"),
        f"-runs={args.runs}",
        f"-seed={args.seed}",
        f"-max_len={MAX_LEN[name]}",
        f"-timeout={args.input_timeout}",
        f"-rss_limit_mb={args.rss_limit_mb}",
        f"-artifact_prefix={artifacts}/{name}-",
        "-print_final_stats=1",
        str(corpus),
    ]
    # The targets' temporary files (indexes, app data) go where this run cleans up.
    environment = {**os.environ, "TMPDIR": str(temp), "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=args.target_timeout,
            env=environment,
            cwd=work,
        )
    except subprocess.TimeoutExpired as exc:
        report.error = f"no result within {args.target_timeout} s"
        output = exc.stderr if isinstance(exc.stderr, str) else ""
    else:
        report.exit_code = done.returncode
        output = done.stderr + done.stdout
    report.seconds = round(time.monotonic() - started, 2)
    _parse_output(report, output)
    report.crashes = sorted(
        str(path)
        for path in set(artifacts.iterdir()) - before
        if _ARTIFACT.match(path.name.removeprefix(f"{name}-"))
    )
    if report.exit_code not in (0, None) and not report.crashes and report.error is None:
        report.error = "the target exited with an error:\n" + output[-3000:]
    if report.crashes:
        report.error = output[-3000:]
    return report


def _parse_output(report: TargetReport, output: str) -> None:
    for line in output.splitlines():
        status = _STATUS.match(line.strip())
        if status:
            report.executions = max(report.executions, int(status.group(1)))
            values = dict(_FIELD.findall(status.group(3)))
            if "cov" in values:
                report.coverage = int(values["cov"])
            if "ft" in values:
                report.features = int(values["ft"])
            if "corp" in values:
                report.corpus = int(values["corp"])
        done = re.match(r"(?:Done (\d+) runs in|stat::number_of_executed_units: (\d+))", line)
        if done:
            report.executions = int(done.group(1) or done.group(2))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000, help="executions per target")
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}"
    )
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer's random seed")
    parser.add_argument(
        "--input-timeout", type=int, default=20, help="seconds one input may take (a crash)"
    )
    parser.add_argument(
        "--rss-limit-mb", type=int, default=3072, help="memory a target may use (a crash)"
    )
    parser.add_argument(
        "--target-timeout", type=float, default=900, help="seconds a whole target run may take"
    )
    parser.add_argument(
        "--artifacts", help="directory for crash inputs (default: a new temporary one)"
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
