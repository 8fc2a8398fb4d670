"""The GPU benchmark's smoke run, and numbaloss without numba-cuda."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

import pytest


def test_benchmark_tiny_smoke_run():
    """Every loss through the benchmark on a few hundred elements, results checked
    against the NumPy reference (under the simulator in CI)."""
    from numbaloss._cuda import bench

    out = io.StringIO()
    rows = bench.run(size=300, classes=4, repeats=1, tiny=True, out=out, rows=4, dim=3, pairwise_repeats=1)
    names = {row["loss"] for row in rows}
    import numbaloss as nl

    assert set(nl.LOSSES) <= names and "binary_cross_entropy[logits]" in names
    assert all(row["kernel_s"] > 0 and row["bytes"] > 0 for row in rows)
    assert "mse" in out.getvalue() and "N = 4 rows of D = 3" in out.getvalue()


def test_benchmark_command_line(capsys):
    from numbaloss._cuda import bench

    assert bench.main(["--tiny", "--only", "mse,categorical_focal,nt_xent"]) == 0
    printed = capsys.readouterr().out
    assert "mse" in printed and "categorical_focal[logits]" in printed and "huber" not in printed
    assert "nt_xent" in printed and "supcon" not in printed


@pytest.mark.anywhere
def test_numbaloss_imports_and_names_the_reason_without_numba_cuda():
    code = textwrap.dedent("""
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "numba_cuda" or name == "numba.cuda" or name.startswith("numba.cuda."):
                    raise ImportError("No module named " + repr(name) + " (blocked)")
                return None

        sys.meta_path.insert(0, Block())
        import numpy as np
        import numbaloss as nl

        status = nl.backend_status()["cuda"]
        assert status.startswith("backend 'cuda' is not available") and "numba-cuda is not installed" in status, status
        assert "cuda" not in nl.available_backends()
        assert nl.mse(np.zeros(3), np.ones(3)) == 1.0
        try:
            nl.mse(np.zeros(3), np.ones(3), backend="cuda")
        except nl.BackendUnavailableError as exc:
            assert "pip install 'numbaloss[cuda]'" in str(exc), exc
        else:
            raise AssertionError("no error")
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "ok" in result.stdout, result.stdout + result.stderr
