"""`numbaloss bench` (table, Markdown page, chart) and the CI check of the asv results."""

import importlib.util
import math
import pathlib

import numpy as np

from numbaloss import LOSSES, bench
from numbaloss.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _quick_check():
    spec = importlib.util.spec_from_file_location("quick_check", ROOT / "asv_benchmarks" / "quick_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_writes_the_page_between_its_markers_and_the_chart(tmp_path, capsys):
    page = tmp_path / "performance.md"
    page.write_text(f"# Performance\n\nintro\n\n{bench.BEGIN_MARKER}\nold\n{bench.END_MARKER}\n\n"
                    "## Notes\nkept\n", encoding="utf-8")
    chart = tmp_path / "performance.png"
    code = main(["bench", "mse", "--size", "2000", "--repeats", "1", "--backend", "numba", "--no-pairwise",
                 "--no-peers", "--no-cold-start", "--markdown", str(page), "--plot", str(chart)])
    assert code == 0
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = page.read_text(encoding="utf-8")
    assert text.startswith("# Performance\n\nintro\n\n" + bench.BEGIN_MARKER)
    assert text.endswith(bench.END_MARKER + "\n\n## Notes\nkept\n")
    assert "\nold\n" not in text
    assert "| mse | " in text and f"| {bench.LATENCY_CASE} | " in text
    assert "](performance.png)" in text
    out = capsys.readouterr().out
    assert "memory floor" in out and "numba" in out


def test_verdicts_compare_the_fastest_backend_with_the_base_and_the_peers():
    rows = [("mse", "memory floor", 1.0), ("mse", "numba", 1.4), ("mse", "cython", 3.0),
            ("mse", bench.NUMPY, 4.0), ("mse", bench.JAX, 4.5), ("mse", bench.PYTORCH, 6.0)]
    table = bench.format_table(rows)
    assert "≤ 1.5× memory floor: met" in table
    assert "3× faster than NumPy: NOT met" in table  # 1.4 × 3 > 4.0
    assert "3× faster than JAX: met" in table
    assert "5× faster than PyTorch: NOT met" in table
    slow = [("mse", "memory floor", 1.0), ("mse", "numba", 1.6)]
    assert "≤ 1.5× memory floor: NOT met" in bench.format_table(slow)


def test_hand_written_versions_compute_the_same_losses():
    """The NumPy baselines must be the losses they stand in for (PyTorch and JAX are
    checked the same way where installed: not in CI)."""
    rng = np.random.default_rng(0)
    for label, name, params, kinds, hand, *_ in bench.CASES:
        y, z = bench._inputs(kinds, 2000, np.float64, rng)
        value, grad = LOSSES[name].value_and_grad(y, z, backend="numpy", **params)
        hand_value, hand_grad = hand(y, z)
        np.testing.assert_allclose(hand_value, value, rtol=1e-12, err_msg=label)
        np.testing.assert_allclose(hand_grad, grad, rtol=1e-9, atol=1e-15, err_msg=label)


def _results(values, params):
    return {"result_columns": ["result", "params", "version"],
            "results": {"losses.ValueAndGrad.time_value_and_grad": [values, params, "v"]}}


def test_quick_check_reports_failed_and_wrongly_skipped_benchmarks():
    check = _quick_check()
    params = [["'mse'"], ["'numba'", "'cuda'"], ["'float32'", "'float64'"]]
    assert check.problems(_results([1e-6, 2e-6, math.nan, math.nan], params)) == []  # cuda skipped: fine
    found = check.problems(_results([None, math.nan, math.nan, 1e-6], params))
    assert found == [
        "losses.ValueAndGrad.time_value_and_grad('mse', 'numba', 'float32'): failed",
        "losses.ValueAndGrad.time_value_and_grad('mse', 'numba', 'float64'): skipped on an "
        "always-available backend",
    ]
    assert check.problems(_results(None, params)) == ["losses.ValueAndGrad.time_value_and_grad: failed"]
