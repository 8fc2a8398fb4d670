"""The ``numbaloss`` command line: ``info`` and ``score`` (readers, chunked scoring,
errors, progress bar, JSON), run in-process through ``cli.main`` and once as
``python -m numbaloss``."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import numbaloss as nl
from numbaloss import _config, _score, cli

try:  # the io extra; only the Parquet cases need it
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError:
    pa = pq = None
needs_pyarrow = pytest.mark.skipif(pa is None, reason="pyarrow (numbaloss[io]) is not installed")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RTOL = 1e-12  # chunked and whole sums differ only in float64 summation order


def run_cli(capsys, *argv):
    """(exit code, stdout, stderr) of ``numbaloss argv``."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def score_value(capsys, *argv) -> float:
    code, out, err = run_cli(capsys, "score", *argv, "--json")
    assert code == 0, err
    return json.loads(out)["value"]


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(7)


def write(path, array=None, **columns):
    """Write an array (or named columns) in the format of ``path``'s suffix."""
    path = str(path)
    if path.endswith(".npy"):
        np.save(path, array)
    elif path.endswith(".npz"):
        np.savez_compressed(path, **columns) if columns else np.savez(path, array)
    elif path.endswith(".csv"):
        names = list(columns)
        data = np.column_stack([columns[n] for n in names])
        fmt = ["%d" if columns[n].dtype.kind in "iu" else "%.17g" for n in names]
        np.savetxt(path, data, delimiter=",", header=",".join(names), comments="", fmt=fmt)
    elif path.endswith(".parquet"):
        pq.write_table(pa.table(columns), path, row_group_size=23)
    return path


# ------------------------------------------------------------------ formats


@pytest.fixture(scope="module")
def softmax_data(rng):
    labels = rng.integers(0, 3, 101)
    probs = rng.dirichlet([1.0, 1.0, 1.0], 101)
    return labels, probs


def _columns(labels, probs):
    return {"y_true": labels, "p0": probs[:, 0], "p1": probs[:, 1], "p2": probs[:, 2]}


@pytest.mark.parametrize("fmt", ["npy", "npz", "csv", pytest.param("parquet", marks=needs_pyarrow),
                                 pytest.param("parquet-list", marks=needs_pyarrow)])
def test_every_format_scores_like_the_library(tmp_path, capsys, softmax_data, fmt):
    labels, probs = softmax_data
    if fmt == "npy":
        args = ["--y-true", write(tmp_path / "t.npy", labels), "--y-pred", write(tmp_path / "p.npy", probs)]
    elif fmt == "npz":  # one archive, each input picks the array named like it
        path = write(tmp_path / "d.npz", y_true=labels, y_pred=probs)
        args = ["--y-true", path, "--y-pred", path]
    elif fmt == "parquet-list":  # the class scores as one list column
        path = write(tmp_path / "d.parquet", y_true=labels,
                     y_pred=pa.array(list(probs), type=pa.list_(pa.float64())))
        args = ["--y-true", path, "--y-pred", path]
    else:  # a table: y_true column, every other column is y_pred
        path = write(tmp_path / f"d.{fmt}", **_columns(labels, probs))
        args = ["--y-true", path, "--y-pred", path]
    params = dict(class_weight=np.array([1.0, 2.0, 0.5]), ignore_index=1)
    expected = nl.cce(labels, probs, **params)
    flags = ["-p", "class_weight=1,2,0.5", "-p", "ignore_index=1"]
    whole = score_value(capsys, "cce", *args, *flags)
    chunked = score_value(capsys, "cce", *args, *flags, "--chunk-rows", 7)
    np.testing.assert_allclose(whole, expected, rtol=RTOL)
    np.testing.assert_allclose(chunked, expected, rtol=RTOL)


@pytest.mark.parametrize("suffix", [".csv", pytest.param(".parquet", marks=needs_pyarrow)])
def test_one_table_holds_targets_predictions_and_weights(tmp_path, capsys, softmax_data, suffix):
    labels, probs = softmax_data
    w = np.linspace(0.5, 2.0, len(labels))
    path = write(tmp_path / f"t{suffix}", **_columns(labels, probs), sample_weight=w)
    value = score_value(capsys, "cce", "--y-true", path, "--y-pred", path, "--sample-weight", path,
                        "--chunk-rows", 10)
    np.testing.assert_allclose(value, nl.cce(labels, probs, sample_weight=w), rtol=RTOL)


def test_npz_member_chosen_with_key(tmp_path, capsys, rng):
    y, p = rng.standard_normal(50), rng.standard_normal(50)
    path = write(tmp_path / "d.npz", targets=y, outputs=p)
    value = score_value(capsys, "mse", "--y-true", path, "--y-pred", path,
                        "--key", "y_true=targets", "--key", "y_pred=outputs")
    np.testing.assert_allclose(value, nl.mse(y, p), rtol=RTOL)


def test_csv_without_header_and_integer_targets(tmp_path, capsys, rng):
    y = (rng.random(40) < 0.5).astype(np.int64)
    p = rng.uniform(0.05, 0.95, 40)
    np.savetxt(tmp_path / "y.csv", y, fmt="%d")
    np.savetxt(tmp_path / "p.csv", p, fmt="%.17g")
    value = score_value(capsys, "bce", "--y-true", tmp_path / "y.csv", "--y-pred", tmp_path / "p.csv",
                        "--chunk-rows", 9)
    np.testing.assert_allclose(value, nl.bce(y, p), rtol=RTOL)


# ------------------------------------------------------------------ chunked == whole


def _case(name, rng, n=257):
    """(loss, {input: array}, params, {flag values}, sample_weight or None)."""
    w = rng.uniform(0.1, 2.0, n)
    if name == "mse_weighted":
        return nl.mse, {"y_true": rng.standard_normal((n, 3)), "y_pred": rng.standard_normal((n, 3))}, {}, [], w
    if name == "bce_logits":
        return (nl.bce, {"y_true": (rng.random(n) < 0.3).astype(np.float64), "y_pred": rng.standard_normal(n)},
                {"from_logits": True, "pos_weight": 2.5, "label_smoothing": 0.1},
                ["from_logits=true", "pos_weight=2.5", "label_smoothing=0.1"], w)
    if name == "cce_labels_weighted":
        return (nl.cce, {"y_true": rng.integers(0, 4, n), "y_pred": rng.standard_normal((n, 4))},
                {"from_logits": True, "class_weight": np.array([1.0, 0.5, 2.0, 1.5]), "ignore_index": 2},
                ["from_logits=true", "class_weight=1,0.5,2,1.5", "ignore_index=2"], w)
    if name == "cce_dense":
        return (nl.cce, {"y_true": rng.dirichlet(np.ones(5), n), "y_pred": rng.standard_normal((n, 5))},
                {"from_logits": True, "label_smoothing": 0.05}, ["from_logits=true", "label_smoothing=0.05"], None)
    if name == "categorical_focal":
        return (nl.categorical_focal, {"y_true": rng.integers(0, 3, n), "y_pred": rng.standard_normal((n, 3))},
                {"from_logits": True, "gamma": 1.5}, ["from_logits=yes", "gamma=1.5"], w)
    if name == "focal":
        return (nl.focal, {"y_true": (rng.random(n) < 0.2).astype(np.float32),
                           "y_pred": rng.uniform(0.01, 0.99, n).astype(np.float32)},
                {"alpha": None}, ["alpha=none"], None)
    if name == "gan_generator":  # one input, a factor ½ in front of the mean
        return nl.gan_generator, {"d_fake": rng.uniform(0.05, 0.95, n)}, {}, [], w
    raise ValueError(name)


def _inputs(tmp_path, arrays):
    args = []
    for name, a in arrays.items():
        path = write(tmp_path / f"{name}.npy", a)
        args += ["--" + name.replace("_", "-"), path] if name in ("y_true", "y_pred") else ["--input", f"{name}={path}"]
    return args


CHUNKED_CASES = ["mse_weighted", "bce_logits", "cce_labels_weighted", "cce_dense", "categorical_focal", "focal",
                 "gan_generator"]


@pytest.mark.parametrize("name", CHUNKED_CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_chunked_equals_whole(tmp_path, capsys, rng, name, reduction):
    loss, arrays, params, flags, w = _case(name, rng)
    args = _inputs(tmp_path, arrays) + [x for f in flags for x in ("-p", f)] + ["--reduction", reduction]
    if w is not None:
        args += ["--sample-weight", write(tmp_path / "w.npy", w)]
    expected = loss(*arrays.values(), reduction=reduction, sample_weight=w, **params)
    values = [score_value(capsys, loss.name, *args, *chunk) for chunk in ([], ["--chunk-rows", 1000],
                                                                          ["--chunk-rows", 16],
                                                                          ["--chunk-rows", 1])]
    np.testing.assert_allclose(values, expected, rtol=RTOL)


def test_json_output(tmp_path, capsys, rng):
    y, p = rng.standard_normal(30), rng.standard_normal(30)
    code, out, err = run_cli(capsys, "score", "huber", "--y-true", write(tmp_path / "y.npy", y),
                             "--y-pred", write(tmp_path / "p.npy", p), "-p", "delta=0.5", "--backend", "numpy",
                             "--json")
    assert code == 0 and err == ""
    result = json.loads(out)
    assert set(result) == {"loss", "params", "reduction", "value", "n_rows", "backend", "seconds"}
    assert result["loss"] == "huber" and result["params"] == {"delta": 0.5}
    assert result["reduction"] == "mean" and result["n_rows"] == 30 and result["backend"] == "numpy"
    assert result["value"] == pytest.approx(float(nl.huber(y, p, delta=0.5)), rel=RTOL)
    assert result["seconds"] >= 0


def test_plain_output_is_the_number(tmp_path, capsys, rng):
    y, p = rng.standard_normal(30), rng.standard_normal(30)
    code, out, err = run_cli(capsys, "score", "mse", "--y-true", write(tmp_path / "y.npy", y),
                             "--y-pred", write(tmp_path / "p.npy", p))
    assert code == 0 and err == ""
    assert float(out) == pytest.approx(float(nl.mse(y, p)), rel=RTOL)


# ------------------------------------------------------------------ losses read whole


def test_batch_coupled_loss_is_read_whole(tmp_path, capsys, rng):
    z_i, z_j = rng.standard_normal((40, 8)), rng.standard_normal((40, 8))
    args = _inputs(tmp_path, {"z_i": z_i, "z_j": z_j})
    expected = float(nl.nt_xent(z_i, z_j, temperature=0.3))
    assert score_value(capsys, "nt_xent", *args, "-p", "temperature=0.3") == pytest.approx(expected, rel=RTOL)
    assert score_value(capsys, "nt_xent", *args, "-p", "temperature=0.3", "--chunk-rows", 40) == \
        pytest.approx(expected, rel=RTOL)
    code, out, err = run_cli(capsys, "score", "nt_xent", *args, "--chunk-rows", 10)
    assert code == 2 and out == ""
    assert "nt_xent cannot be computed in chunks of rows" in err and "at least 40" in err


def test_two_term_loss_with_inputs_of_different_lengths(tmp_path, capsys, rng):
    d_real, d_fake = rng.standard_normal(30), rng.standard_normal(45)
    args = _inputs(tmp_path, {"d_real": d_real, "d_fake": d_fake})
    value = score_value(capsys, "lsgan_discriminator", *args, "-p", "b=0.9")
    assert value == pytest.approx(float(nl.lsgan_discriminator(d_real, d_fake, b=0.9)), rel=RTOL)


# ------------------------------------------------------------------ errors


@pytest.fixture()
def files(tmp_path, rng):
    paths = {
        "y": write(tmp_path / "y.npy", rng.standard_normal(20)),
        "p": write(tmp_path / "p.npy", rng.standard_normal(20)),
        "p19": write(tmp_path / "p19.npy", rng.standard_normal(19)),
        "y2d": write(tmp_path / "y2d.npy", rng.standard_normal((20, 3))),
        "p2d": write(tmp_path / "p2d.npy", rng.standard_normal((20, 4))),
        "binary": write(tmp_path / "binary.npy", (rng.random(20) < 0.5).astype(np.float64)),
        "probs": write(tmp_path / "probs.npy", np.r_[rng.uniform(0.1, 0.9, 14), 1.5, rng.uniform(0.1, 0.9, 5)]),
        "two": write(tmp_path / "two.npz", a=np.zeros(3), b=np.zeros(3)),
        "text_column": write(tmp_path / "text.parquet", y_pred=pa.array(["0.5"] * 20)) if pa else None,
        "csv_bad": str(tmp_path / "bad.csv"),
        "corrupt": str(tmp_path / "corrupt.npy"),
        "txt": str(tmp_path / "y.txt"),
    }
    with open(paths["csv_bad"], "w") as fh:
        fh.write("y_pred\n0.5\n0.25\nabc\n")
    with open(paths["corrupt"], "wb") as fh:
        fh.write(b"not a numpy file")
    with open(paths["txt"], "w") as fh:
        fh.write("1\n")
    return paths


ERRORS = [
    (["mse", "--y-true", "{missing}", "--y-pred", "{p}"], "missing.npy: no such file"),
    (["mse", "--y-true", "{txt}", "--y-pred", "{p}"], "unknown file type '.txt'"),
    (["mse", "--y-true", "{corrupt}", "--y-pred", "{p}"], "corrupt.npy: cannot read as .npy"),
    (["mse", "--y-true", "{y}", "--y-pred", "{p19}"],
     "the inputs have different numbers of rows: y_true 20, y_pred 19"),
    (["mse", "--y-true", "{y}", "--y-pred", "{csv_bad}"], "bad.csv: in the 3 lines from line 2"),
    (["mse", "--y-true", "{y2d}", "--y-pred", "{p2d}"], "y_true and y_pred must have the same shape"),
    (["msee", "--y-true", "{y}", "--y-pred", "{p}"], "unknown loss 'msee'; did you mean 'mse'?"),
    (["mse", "--y-true", "{y}", "--y-pred", "{p}", "-p", "delta=1"],
     "unknown parameter 'delta' for mse; it takes no parameters"),
    (["huber", "--y-true", "{y}", "--y-pred", "{p}", "-p", "delt=1"],
     "unknown parameter 'delt' for huber; its parameters are delta"),
    (["huber", "--y-true", "{y}", "--y-pred", "{p}", "-p", "delta=big"],
     "parameter delta of huber takes a float (default 1.0), got 'big'"),
    (["huber", "--y-true", "{y}", "--y-pred", "{p}", "-p", "delta=-1"], "delta must be"),
    (["bce", "--y-true", "{y}", "--y-pred", "{p}", "-p", "from_logits=maybe"],
     "parameter from_logits of binary_cross_entropy takes a bool"),
    (["huber", "--y-true", "{y}", "--y-pred", "{p}", "-p", "delta"], "--param takes NAME=VALUE, got 'delta'"),
    (["mse", "--y-pred", "{p}"], "mse needs --y-true"),
    (["mse", "--input", "foo={y}", "--y-pred", "{p}"], "mse has no input 'foo'; its inputs are y_true, y_pred"),
    (["mse", "--y-true", "{y}", "--y-pred", "{p}", "--key", "x"], "a .npy file holds a single array"),
    pytest.param(["mse", "--y-true", "{y}", "--y-pred", "{text_column}"],
                 "text.parquet: column 'y_pred' has type string; a loss input must be numeric", marks=needs_pyarrow),
    (["nt_xent", "--y-true", "{y}", "--y-pred", "{p}"], "nt_xent has no input y_true"),
    (["mse", "--y-true", "{two}", "--y-pred", "{p}"],
     "two.npz: holds the arrays a, b; choose one with --key"),
    (["mse", "--y-true", "{two}", "--y-pred", "{p}", "--key", "y_true=c"], "two.npz: has no array 'c'"),
    (["lsgan_discriminator", "--input", "d_real={y}", "--input", "d_fake={p}", "--sample-weight", "{y}"],
     "lsgan_discriminator does not take sample weights"),
    (["bce", "--y-true", "{binary}", "--y-pred", "{probs}", "--chunk-rows", "5"],
     "in rows 10–14: y_pred must lie in [0.0, 1.0] (probabilities; pass from_logits=True for logits); "
     "found 1 value(s) outside"),
    (["mse", "--y-true", "{y}", "--y-pred", "{p}", "--chunk-rows", "0"],
     "--chunk-rows must be a positive number"),
    (["mse", "--y-true", "{y}", "--y-pred", "{p}", "--backend", "cuda"], "backend 'cuda' is not available"),
]


@pytest.mark.parametrize("argv, message", ERRORS, ids=[(e.values if hasattr(e, "values") else e)[1][:40]
                                                      for e in ERRORS])
def test_errors_are_one_line_with_exit_code_2(files, capsys, tmp_path, argv, message):
    if "cuda" in argv and _config.backend_status()["cuda"] == "available":
        pytest.skip("a GPU is available here")
    argv = [a.format(missing=tmp_path / "missing.npy", **files) for a in argv]
    code, out, err = run_cli(capsys, "score", *argv)
    assert code == 2
    assert out == ""
    assert err.startswith("numbaloss: error: ") and err.count("\n") == 1, err
    assert message in err, err


# ------------------------------------------------------------------ progress bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("terminal, quiet, shown", [(False, False, False), (True, False, True), (True, True, False)])
def test_progress_bar_only_on_a_terminal_without_quiet(tmp_path, capsys, monkeypatch, rng, terminal, quiet, shown):
    y, p = rng.standard_normal(100), rng.standard_normal(100)
    stream = Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    argv = ["score", "mse", "--y-true", write(tmp_path / "y.npy", y), "--y-pred", write(tmp_path / "p.npy", p),
            "--chunk-rows", "10"] + (["--quiet"] if quiet else [])
    assert cli.main(argv) == 0
    assert float(capsys.readouterr().out) == pytest.approx(float(nl.mse(y, p)), rel=RTOL)
    drawn = stream.getvalue()
    assert ("100%  100 rows" in drawn) is shown
    if not shown:
        assert drawn == ""


# ------------------------------------------------------------------ parameters


def test_parameters_typed_from_their_defaults():
    parse = _score.parse_param
    assert parse(nl.bce, "from_logits=True") == ("from_logits", True)
    assert parse(nl.bce, "from_logits=0") == ("from_logits", False)
    assert parse(nl.bce, "pos_weight=3") == ("pos_weight", 3)
    assert parse(nl.huber, "delta=2") == ("delta", 2.0) and isinstance(parse(nl.huber, "delta=2")[1], float)
    assert parse(nl.focal, "alpha=none") == ("alpha", None)
    assert parse(nl.cce, "ignore_index=-100") == ("ignore_index", -100)
    name, weights = parse(nl.cce, "class_weight=1,2.5,3")
    np.testing.assert_array_equal(weights, [1.0, 2.5, 3.0])
    assert parse(nl.info_nce, "similarity=dot") == ("similarity", "dot")


# ------------------------------------------------------------------ info


def test_info_text_and_json(capsys):
    code, out, _ = run_cli(capsys, "info")
    assert code == 0
    assert out.startswith(f"numbaloss {nl.__version__} ")
    for name in _config.BACKENDS:
        assert f"\n  {name:7s} " in out
    assert f"threads: {nl.get_num_threads()}" in out
    code, out, _ = run_cli(capsys, "info", "--json")
    info = json.loads(out)
    assert info["version"] == nl.__version__
    assert info["backends"] == nl.backend_status()
    assert info["threads"] == nl.get_num_threads()
    assert info["backends"]["numpy"] == "available"


def test_info_names_the_numba_cache_folder(capsys, monkeypatch, tmp_path):
    import numba

    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path))
    code, out, _ = run_cli(capsys, "info", "--json")
    assert json.loads(out)["numba_cache_dir"].startswith(str(tmp_path))
    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    code, out, _ = run_cli(capsys, "info", "--json")
    assert json.loads(out)["numba_cache_dir"] == os.path.join(ROOT, "numbaloss", "_numba", "__pycache__")


def test_info_says_when_the_cython_extension_is_not_built(capsys, monkeypatch):
    from numbaloss import _cython_backend

    monkeypatch.setattr(_cython_backend, "_import_error", ImportError("No module named 'numbaloss._cext'"))
    monkeypatch.delitem(_config._loaded, "cython", raising=False)
    monkeypatch.delitem(_config._unavailable, "cython", raising=False)
    try:
        code, out, _ = run_cli(capsys, "info")
    finally:
        _config._unavailable.pop("cython", None)  # let later tests load the real extension
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("  cython"))
    assert "not available: the compiled extension numbaloss._cext was not built" in line


# ------------------------------------------------------------------ as a program


def test_python_m_numbaloss(tmp_path, rng):
    y, p = rng.standard_normal(50), rng.standard_normal(50)
    paths = [write(tmp_path / "y.npy", y), write(tmp_path / "p.npy", p)]
    env = dict(os.environ, PYTHONPATH=ROOT)
    ok = subprocess.run([sys.executable, "-m", "numbaloss", "score", "mse", "--y-true", paths[0],
                         "--y-pred", paths[1]], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert ok.returncode == 0 and ok.stderr == ""  # piped: no progress bar
    assert float(ok.stdout) == pytest.approx(float(nl.mse(y, p)), rel=RTOL)
    bad = subprocess.run([sys.executable, "-m", "numbaloss", "score", "mse", "--y-true", "nope.npy",
                          "--y-pred", paths[1]], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == "numbaloss: error: nope.npy: no such file\n"


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".csv", pytest.param(".parquet", marks=needs_pyarrow)])
def test_readers_give_writeable_blocks_of_exact_size(tmp_path, rng, suffix):
    # writeable: the kernels are compiled for writeable arrays (a read-only view
    # would compile a second copy of every loop)
    from numbaloss._io import open_array

    data = rng.standard_normal(50)
    path = write(tmp_path / f"d{suffix}", data) if suffix == ".npy" else write(tmp_path / f"d{suffix}", y_pred=data)
    reader = open_array(path, prefer="y_pred")
    blocks = list(reader.chunks(7))
    assert [len(b) for b in blocks] == [7] * 7 + [1]
    assert all(b.flags.writeable for b in blocks) and reader.read().flags.writeable
    np.testing.assert_array_equal(np.concatenate(blocks), data)
    assert reader.fraction_read == 1.0


def test_parquet_without_pyarrow_says_which_extra(tmp_path, capsys, monkeypatch):
    path = tmp_path / "p.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import fails as if not installed
    code, _, err = run_cli(capsys, "score", "mse", "--y-true", path, "--y-pred", path)
    assert code == 2
    assert err == f"numbaloss: error: {path}: reading .parquet files needs pyarrow (pip install 'numbaloss[io]')\n"
