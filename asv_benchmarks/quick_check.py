"""CI's benchmark pass: run the asv suite once in quick mode (``NUMBALOSS_ASV_QUICK=1``,
small inputs, one sample each) against the installed checkout, and fail when a
benchmark failed or when a backend that is always there (numba, numpy) was skipped.

asv records a failed benchmark as ``null`` and a skipped one (``NotImplementedError``
in setup) as ``NaN``; a broken setup that raised ``BackendUnavailableError`` would
show up as a skip, hence the second check.  Run from anywhere:
``python asv_benchmarks/quick_check.py`` (``make bench-check``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MACHINE = "ci-quick"  # its own results folder: quick figures never mix with real ones
ALWAYS_AVAILABLE = ("numba", "numpy")


def _asv(*args: str) -> int:
    env = dict(os.environ, NUMBALOSS_ASV_QUICK="1")
    return subprocess.run([sys.executable, "-m", "asv", *args], cwd=HERE, env=env).returncode


def problems(results: dict) -> list[str]:
    """The failed benchmarks, and the skipped ones that ran on an always-available
    backend, of one asv results file."""
    columns = results["result_columns"]
    found = []
    for name, entry in results["results"].items():
        record = dict(zip(columns, entry))
        values, params = record["result"], record["params"]
        if values is None:
            found.append(f"{name}: failed")
            continue
        combos = _combinations(params)
        for value, combo in zip(values, combos):
            if value is None:
                found.append(f"{name}({', '.join(combo)}): failed")
            elif isinstance(value, float) and math.isnan(value) and any(
                    repr(b) in combo for b in ALWAYS_AVAILABLE):
                found.append(f"{name}({', '.join(combo)}): skipped on an always-available backend")
    return found


def _combinations(params: list) -> list[tuple]:
    """asv's order of the parameter combinations (the last parameter varies fastest)."""
    combos = [()]
    for values in params:
        combos = [c + (v,) for c in combos for v in values]
    return combos


def main() -> int:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, check=True, capture_output=True,
                            text=True).stdout.strip()
    results_dir = os.path.join(HERE, ".asv", "results", MACHINE)
    shutil.rmtree(results_dir, ignore_errors=True)
    if _asv("machine", "--yes", "--machine", MACHINE):
        return 1
    code = _asv("run", "--python=same", "--quick", "--show-stderr", "--launch-method=forkserver",
                "--machine", MACHINE, "--set-commit-hash", commit)
    files = [f for f in os.listdir(results_dir) if f.endswith(".json") and f != "machine.json"] \
        if os.path.isdir(results_dir) else []
    if not files:
        print("asv quick check: no results written", file=sys.stderr)
        return 1
    found = []
    for name in files:
        with open(os.path.join(results_dir, name), encoding="utf-8") as fh:
            found += problems(json.load(fh))
    shutil.rmtree(results_dir, ignore_errors=True)
    for line in found:
        print(f"asv quick check: {line}", file=sys.stderr)
    if found or code:
        print(f"asv quick check FAILED (asv exit code {code}, {len(found)} problem(s))", file=sys.stderr)
        return 1
    print("asv quick check: every benchmark ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
