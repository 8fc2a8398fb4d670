"""Record the outputs of numbaloss's peer libraries into ``peer_values.npz``.

CI has no PyTorch, so this script is run once by hand (see ``README.md`` beside
it) and its output file is committed. The tests load the file and compare
numbaloss with the recorded numbers; they never import torch.

Everything is float64: inputs are drawn with NumPy (fixed seeds), the peers run
on ``torch.float64`` tensors, and gradients come from autograd. A gradient is
that of the returned value; for ``reduction="none"`` it is the gradient of the
sum of the returned array(s).

Layout of the npz (every key is a plain array; no pickles):

* ``<loss>/<data>/<input>``              an input (float64, or int64 labels)
* ``<loss>/<data>/<param>``              an array parameter (e.g. ``class_weight``)
* ``<loss>/<data>/<variant>/<reduction>/value``       the returned value
  (two-term losses with ``reduction="none"``: ``value_0`` and ``value_1``)
* ``<loss>/<data>/<variant>/<reduction>/grad_<input>`` one per differentiated input
* ``index``  a JSON string: {"versions": ..., "conventions": ..., "cases": [...]}.

Each entry of ``cases`` says how to call numbaloss (``function``; ``args``: the npz
keys of the positional inputs in order, with ``arg_names``; ``kwargs``: keyword
parameters as JSON; ``array_kwargs``: keyword parameters whose value is the npz
array at the given key), which keys hold the expected ``value`` (a key, or a list
of two keys for a tuple) and ``grads`` (keys in numbaloss's gradient order,
``grad_wrt`` names the inputs), and what produced the numbers (``source`` is
"package" when the peer library's own function ran, "formula" when the formula
was written out here in torch; ``peer`` and ``peer_call`` say which). ``checks``
holds cross-checks made while generating (e.g. the largest difference between a
package and the written-out formula).

This file never imports numbaloss.
"""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
torch.manual_seed(0)  # only PML's weight initialisers draw from it; we overwrite W

try:  # torchvision: the real sigmoid_focal_loss when it imports
    import torchvision
    from torchvision.ops import sigmoid_focal_loss as _tv_sigmoid_focal_loss
except Exception:  # pragma: no cover - see README
    torchvision = None
    _tv_sigmoid_focal_loss = None

import info_nce as info_nce_pkg
import pytorch_metric_learning
from info_nce import InfoNCE
from pytorch_metric_learning.losses import ArcFaceLoss, CosFaceLoss, NTXentLoss, SupConLoss

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "peer_values.npz")

REDUCTIONS = ("mean", "sum", "none")

STORE: dict[str, np.ndarray] = {}
CASES: list[dict] = []


def _pkg_version(name):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # pragma: no cover
        return "unknown"


VERSIONS = {
    "python": sys.version.split()[0],
    "numpy": np.__version__,
    "torch": torch.__version__,
    "torchvision": None if torchvision is None else torchvision.__version__,
    "info-nce-pytorch": _pkg_version("info-nce-pytorch"),
    "pytorch-metric-learning": pytorch_metric_learning.__version__,
}
TORCH = f"torch {torch.__version__}"
PML = f"pytorch-metric-learning {pytorch_metric_learning.__version__}"
INFONCE = f"info-nce-pytorch {VERSIONS['info-nce-pytorch']}"


# --------------------------------------------------------------------------- storage


def put(key: str, arr) -> str:
    arr = np.asarray(arr)
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float64)
    elif arr.dtype.kind in "iu":
        arr = arr.astype(np.int64)
    if key in STORE:
        old = STORE[key]
        if old.shape != arr.shape or not np.array_equal(old, arr, equal_nan=True):
            raise RuntimeError(f"key {key} written twice with different data")
    STORE[key] = arr
    return key


def put_inputs(prefix: str, inputs: dict) -> dict:
    """Store a data set's inputs once; return name -> key."""
    return {name: put(f"{prefix}/{name}", arr) for name, arr in inputs.items()}


def _to_torch(arr, requires_grad):
    arr = np.asarray(arr)
    if arr.dtype.kind in "iu":
        return torch.from_numpy(arr.astype(np.int64).copy())
    return torch.tensor(arr, dtype=torch.float64, requires_grad=requires_grad)


def record(
    *,
    loss: str,
    prefix: str,
    variant: str,
    reduction: str,
    function: str,
    arg_names: list,
    keys: dict,
    kwargs: dict,
    grad_wrt: list,
    compute,
    peer: str,
    peer_call: str,
    source: str,
    array_kwargs: dict | None = None,
    note: str = "",
    checks: dict | None = None,
    allow_nonfinite: bool = False,
):
    """Run ``compute(tensors)`` and store value and gradients.

    ``compute`` gets a dict of torch tensors (float inputs with requires_grad when
    listed in ``grad_wrt``, int64 labels as long tensors, array kwargs as tensors)
    and returns a tensor or a tuple of two tensors.
    """
    array_kwargs = array_kwargs or {}
    tensors = {}
    for name, key in keys.items():
        tensors[name] = _to_torch(STORE[key], name in grad_wrt)
    for name, key in array_kwargs.items():
        tensors[name] = _to_torch(STORE[key], False)
    out = compute(tensors)
    base = f"{prefix}/{variant}/{reduction}"
    if isinstance(out, tuple):
        total = sum(o.sum() for o in out)
        value_keys = [put(f"{base}/value_{i}", o.detach().numpy()) for i, o in enumerate(out)]
        value_ref = value_keys
        values = [o.detach().numpy() for o in out]
    else:
        total = out.sum()
        value_ref = put(f"{base}/value", out.detach().numpy())
        values = [out.detach().numpy()]
    leaves = [tensors[n] for n in grad_wrt]
    if total.requires_grad:
        grads = torch.autograd.grad(total, leaves, allow_unused=True)
    else:  # a constant result (e.g. PML's zero loss): zero gradient
        grads = [None] * len(leaves)
    grad_keys = []
    for name, leaf, g in zip(grad_wrt, leaves, grads):
        g = torch.zeros_like(leaf) if g is None else g
        grad_keys.append(put(f"{base}/grad_{name}", g.detach().numpy()))
    if not allow_nonfinite:
        for v in values + [STORE[k] for k in grad_keys]:
            if not np.all(np.isfinite(v)):
                raise RuntimeError(f"non-finite output in {base}")
    CASES.append(
        {
            "id": base,
            "loss": loss,
            "function": function,
            "arg_names": list(arg_names),
            "args": [keys[n] for n in arg_names],
            "kwargs": dict(kwargs, reduction=reduction),
            "array_kwargs": dict(array_kwargs),
            "value": value_ref,
            "grad_wrt": list(grad_wrt),
            "grads": grad_keys,
            "source": source,
            "peer": peer,
            "peer_call": peer_call,
            "note": note,
            "checks": checks or {},
        }
    )
    return out


def maxdiff(a, b) -> float:
    a = np.asarray(a.detach().numpy() if torch.is_tensor(a) else a, dtype=np.float64)
    b = np.asarray(b.detach().numpy() if torch.is_tensor(b) else b, dtype=np.float64)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


# --------------------------------------------------------------------------- 1. mse


def gen_mse():
    rng = np.random.default_rng(101)
    data = {
        "data0": dict(y_true=rng.normal(size=12), y_pred=rng.normal(size=12)),
        "data1": dict(y_true=rng.normal(size=(6, 4)), y_pred=rng.normal(size=(6, 4))),
    }
    yt = np.array([0.0, 1e3, -1e3, 5.0, -2.5, 1e-8, 3.0, 0.0])
    yp = np.array([0.0, -1e3, 1e3 + 0.5, 5.0, 7.5, -1e-8, 3.0 + 1e-12, 1e-300])
    data["data2_extreme"] = dict(y_true=yt, y_pred=yp)
    for dname, inputs in data.items():
        prefix = f"mse/{dname}"
        keys = put_inputs(prefix, inputs)
        for red in REDUCTIONS:
            record(
                loss="mse", prefix=prefix, variant="default", reduction=red,
                function="mse", arg_names=["y_true", "y_pred"], keys=keys, kwargs={},
                grad_wrt=["y_pred"],
                compute=lambda t, red=red: F.mse_loss(t["y_pred"], t["y_true"], reduction=red),
                peer=TORCH, source="package",
                peer_call=f"torch.nn.functional.mse_loss(input=y_pred, target=y_true, reduction={red!r})",
            )


# --------------------------------------------------------------------------- 2. bce


def gen_bce():
    rng = np.random.default_rng(202)
    z_ext = np.array([30.0, -30.0, 1e4, -1e4, 0.0, 30.0, -30.0, 1e4, -1e4, 0.0, 30.0, -30.0, 1e4, -1e4, 0.0])
    y_ext = np.array([1.0] * 5 + [0.0] * 5 + [0.3] * 5)
    logits_data = {
        "data0_hard": dict(y_true=rng.integers(0, 2, size=20).astype(np.float64), y_pred=3.0 * rng.normal(size=20)),
        "data1_soft": dict(y_true=rng.uniform(size=(5, 4)), y_pred=3.0 * rng.normal(size=(5, 4))),
        "data2_extreme": dict(y_true=y_ext, y_pred=z_ext),
    }
    settings = [
        ("posw_none_ls0", None, 0.0),
        ("posw3_ls0", 3.0, 0.0),
        ("posw_none_ls0.1", None, 0.1),
        ("posw3_ls0.2", 3.0, 0.2),
    ]
    for dname, inputs in logits_data.items():
        prefix = f"binary_cross_entropy/logits_{dname}"
        keys = put_inputs(prefix, inputs)
        for vname, pw, eps in settings:
            for red in REDUCTIONS:

                def compute(t, red=red, pw=pw, eps=eps):
                    y = t["y_true"] * (1.0 - eps) + eps / 2.0
                    pwt = None if pw is None else torch.tensor(pw, dtype=torch.float64)
                    return F.binary_cross_entropy_with_logits(t["y_pred"], y, pos_weight=pwt, reduction=red)

                record(
                    loss="binary_cross_entropy", prefix=prefix, variant=vname, reduction=red,
                    function="binary_cross_entropy", arg_names=["y_true", "y_pred"], keys=keys,
                    kwargs={"from_logits": True, "pos_weight": pw, "label_smoothing": eps},
                    grad_wrt=["y_pred"], compute=compute, peer=TORCH, source="package",
                    peer_call=(
                        "torch.nn.functional.binary_cross_entropy_with_logits(input=y_pred, "
                        f"target=y_true*(1-{eps})+{eps}/2, pos_weight="
                        f"{'None' if pw is None else f'torch.tensor({pw})'}, reduction={red!r})"
                    ),
                    note="; ".join(
                        x
                        for x in (
                            "label smoothing applied to the target before the torch call" if eps else "",
                            "torch computes (1-y)z + softplus(-z)-like sums that cancel: where the exact loss "
                            "is tiny (z=-30, y=0: 9.358e-14) torch's element is off by ~ulp(|z|) "
                            "(9.237e-14); compare per-element values with an absolute tolerance"
                            if "extreme" in dname else "",
                        )
                        if x
                    ),
                )
    # probabilities: p inside [1e-3, 1 - 1e-3] so torch's log clamp (-100) and our clip (1e-7) agree
    p_edge = np.array([1e-3, 1.0 - 1e-3, 0.5, 1e-3, 1.0 - 1e-3, 0.5])
    y_edge = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.25])
    prob_data = {
        "data0_hard": dict(
            y_true=rng.integers(0, 2, size=16).astype(np.float64),
            y_pred=np.concatenate([rng.uniform(1e-3, 1 - 1e-3, size=10), p_edge]),
        ),
        "data1_soft": dict(y_true=rng.uniform(size=(4, 5)), y_pred=rng.uniform(1e-3, 1 - 1e-3, size=(4, 5))),
    }
    for dname, inputs in prob_data.items():
        if dname == "data0_hard":
            inputs["y_true"][-6:] = y_edge
        prefix = f"binary_cross_entropy/probs_{dname}"
        keys = put_inputs(prefix, inputs)
        for vname, eps in [("ls0", 0.0), ("ls0.1", 0.1)]:
            for red in REDUCTIONS:

                def compute(t, red=red, eps=eps):
                    y = t["y_true"] * (1.0 - eps) + eps / 2.0
                    return F.binary_cross_entropy(t["y_pred"], y, reduction=red)

                record(
                    loss="binary_cross_entropy", prefix=prefix, variant=vname, reduction=red,
                    function="binary_cross_entropy", arg_names=["y_true", "y_pred"], keys=keys,
                    kwargs={"from_logits": False, "label_smoothing": eps},
                    grad_wrt=["y_pred"], compute=compute, peer=TORCH, source="package",
                    peer_call=(
                        "torch.nn.functional.binary_cross_entropy(input=y_pred, "
                        f"target=y_true*(1-{eps})+{eps}/2, reduction={red!r})"
                    ),
                    note="p kept inside [1e-3, 1-1e-3] (torch clamps log at -100, numbaloss clips p to [1e-7, 1-1e-7])",
                )


# --------------------------------------------------------------------------- 3. cce


def gen_cce():
    rng = np.random.default_rng(303)
    N, K = 12, 5
    logits = 2.0 * rng.normal(size=(N, K))
    labels = rng.integers(0, K, size=N)
    labels[:3] = [2, 1, 2]  # make sure the ignored labels occur
    onehot = np.eye(K)[labels]
    soft = rng.dirichlet(np.ones(K), size=N)
    class_weight = np.array([0.5, 2.0, 1.0, 3.0, 0.25])
    z_ext = np.array(
        [
            [1e4, -1e4, 0.0, 30.0, -30.0],
            [-1e4, 1e4, 0.0, 30.0, -30.0],
            [30.0, -30.0, 0.0, 1.0, 2.0],
            [-30.0, 30.0, 1e4, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],
            [-1e4, -1e4, -1e4, -1e4, 30.0],
        ]
    )
    y_ext = np.array([0, 0, 1, 2, 3, 4])
    NT, T = 3, 4
    logits3 = 2.0 * rng.normal(size=(NT, T, K))
    labels3 = rng.integers(0, K, size=(NT, T))
    labels3_ign = labels3.copy()
    labels3_ign[0, 1] = -1
    labels3_ign[2, 3] = -1
    soft3 = rng.dirichlet(np.ones(K), size=(NT, T))

    def perm_in(x):  # our (N, T, K) -> torch (N, K, T)
        return x.permute(0, 2, 1) if x.dim() == 3 else x

    def torch_ce(t, red, weight, ignore_index, ls):
        z = perm_in(t["y_pred"])
        y = t["y_true"]
        if y.dtype.is_floating_point:
            y = perm_in(y)
        kw = {}
        if ignore_index is not None:
            kw["ignore_index"] = ignore_index
        return F.cross_entropy(
            z, y, weight=None if weight is None else t["class_weight"], reduction=red, label_smoothing=ls, **kw
        )

    datasets = {
        "data0_int": dict(y_true=labels, y_pred=logits),
        "data1_onehot": dict(y_true=onehot, y_pred=logits),
        "data2_soft": dict(y_true=soft, y_pred=logits),
        "data3_int_3d": dict(y_true=labels3, y_pred=logits3),
        "data4_soft_3d": dict(y_true=soft3, y_pred=logits3),
        "data5_int_3d_ignore": dict(y_true=labels3_ign, y_pred=logits3),
        "data6_int_extreme": dict(y_true=y_ext, y_pred=z_ext),
    }
    # (variant, class_weight?, ignore_index, label_smoothing, datasets it applies to)
    variants = [
        ("plain", False, None, 0.0, ["data0_int", "data1_onehot", "data2_soft", "data3_int_3d", "data4_soft_3d", "data6_int_extreme"]),
        ("weight", True, None, 0.0, ["data0_int", "data1_onehot", "data2_soft", "data3_int_3d", "data4_soft_3d"]),
        ("ignore2", False, 2, 0.0, ["data0_int"]),
        ("ls0.1", False, None, 0.1, ["data0_int", "data1_onehot", "data2_soft", "data3_int_3d", "data6_int_extreme"]),
        ("weight_ls0.1", True, None, 0.1, ["data0_int", "data1_onehot", "data2_soft", "data4_soft_3d", "data6_int_extreme"]),
        ("weight_ignore1", True, 1, 0.0, ["data0_int"]),
        ("weight_ignore2_ls0.1", True, 2, 0.1, ["data0_int"]),
        ("ignore-1", False, -1, 0.0, ["data5_int_3d_ignore"]),
        ("weight_ignore-1_ls0.1", True, -1, 0.1, ["data5_int_3d_ignore"]),
    ]
    stored = {}
    for dname, inputs in datasets.items():
        prefix = f"categorical_cross_entropy/logits_{dname}"
        stored[dname] = (prefix, put_inputs(prefix, inputs))
        put(f"{prefix}/class_weight", class_weight)
    for vname, use_w, ign, ls, dnames in variants:
        for dname in dnames:
            prefix, keys = stored[dname]
            for red in REDUCTIONS:
                kwargs = {"from_logits": True, "label_smoothing": ls}
                if ign is not None:
                    kwargs["ignore_index"] = ign
                akw = {"class_weight": f"{prefix}/class_weight"} if use_w else {}
                layout = "permute(0, 2, 1) of our (N, T, K) arrays" if "3d" in dname else "(N, K)"
                record(
                    loss="categorical_cross_entropy", prefix=prefix, variant=vname, reduction=red,
                    function="categorical_cross_entropy", arg_names=["y_true", "y_pred"], keys=keys,
                    kwargs=kwargs, array_kwargs=akw, grad_wrt=["y_pred"],
                    compute=lambda t, red=red, w=use_w, ign=ign, ls=ls: torch_ce(t, red, w or None, ign, ls),
                    peer=TORCH, source="package",
                    peer_call=(
                        f"torch.nn.functional.cross_entropy(input=y_pred, target=y_true, "
                        f"weight={'class_weight' if use_w else None}, "
                        f"ignore_index={ign if ign is not None else -100}, label_smoothing={ls}, "
                        f"reduction={red!r}); torch layout: {layout}"
                    ),
                )
    # probabilities (from_logits=False): nll_loss on log p, integer labels only
    zp = rng.normal(size=(10, K))
    p = np.exp(zp) / np.exp(zp).sum(axis=1, keepdims=True)
    assert p.min() > 1e-3 and p.max() < 1 - 1e-3
    lab = rng.integers(0, K, size=10)
    lab[:2] = [3, 3]
    prefix = "categorical_cross_entropy/probs_data0_int"
    keys = put_inputs(prefix, dict(y_true=lab, y_pred=p))
    put(f"{prefix}/class_weight", class_weight)
    for vname, use_w, ign in [("plain", False, None), ("weight", True, None), ("weight_ignore3", True, 3)]:
        for red in REDUCTIONS:
            kwargs = {"from_logits": False}
            if ign is not None:
                kwargs["ignore_index"] = ign

            def compute(t, red=red, use_w=use_w, ign=ign):
                kw = {} if ign is None else {"ignore_index": ign}
                return F.nll_loss(
                    torch.log(t["y_pred"]), t["y_true"], weight=t["class_weight"] if use_w else None,
                    reduction=red, **kw,
                )

            record(
                loss="categorical_cross_entropy", prefix=prefix, variant=vname, reduction=red,
                function="categorical_cross_entropy", arg_names=["y_true", "y_pred"], keys=keys,
                kwargs=kwargs, array_kwargs={"class_weight": f"{prefix}/class_weight"} if use_w else {},
                grad_wrt=["y_pred"], compute=compute, peer=TORCH, source="package",
                peer_call=(
                    "torch.nn.functional.nll_loss(input=torch.log(y_pred), target=y_true, "
                    f"weight={'class_weight' if use_w else None}, "
                    f"ignore_index={ign if ign is not None else -100}, reduction={red!r})"
                ),
                note="p = softmax rows, all inside [1e-3, 1-1e-3]; torch has no probability-input cross_entropy",
            )


# --------------------------------------------------------------------------- 4. huber


def gen_huber():
    rng = np.random.default_rng(404)
    yt = rng.normal(size=16)
    r = np.concatenate([rng.uniform(-4, 4, size=12), [1.0, -0.5, 2.0, 0.0]])  # |r| = delta exactly too
    data = {
        "data0": dict(y_true=yt, y_pred=yt + r),
        "data1": dict(y_true=rng.normal(size=(4, 5)), y_pred=3.0 * rng.normal(size=(4, 5))),
    }
    # make the |r| = delta entries exact: y_true = 0 there
    data["data0"]["y_true"][-4:] = 0.0
    data["data0"]["y_pred"][-4:] = [1.0, -0.5, 2.0, 0.0]
    for dname, inputs in data.items():
        prefix = f"huber/{dname}"
        keys = put_inputs(prefix, inputs)
        for delta in (1.0, 0.5, 2.0):
            for red in REDUCTIONS:
                record(
                    loss="huber", prefix=prefix, variant=f"delta{delta}", reduction=red,
                    function="huber", arg_names=["y_true", "y_pred"], keys=keys, kwargs={"delta": delta},
                    grad_wrt=["y_pred"],
                    compute=lambda t, red=red, d=delta: F.huber_loss(t["y_pred"], t["y_true"], delta=d, reduction=red),
                    peer=TORCH, source="package",
                    peer_call=f"torch.nn.functional.huber_loss(input=y_pred, target=y_true, delta={delta}, reduction={red!r})",
                )


# --------------------------------------------------------------------------- 5. focal


def _focal_formula(inputs, targets, alpha, gamma, reduction):
    """torchvision.ops.sigmoid_focal_loss, line for line (used only if torchvision is absent)."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    if reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    return loss


def gen_focal():
    rng = np.random.default_rng(505)
    focal_fn = _tv_sigmoid_focal_loss or _focal_formula
    src = "package" if _tv_sigmoid_focal_loss is not None else "formula"
    peer = f"torchvision {torchvision.__version__}" if torchvision is not None else f"{TORCH} (torchvision formula)"
    data = {
        "data0_hard": dict(y_true=rng.integers(0, 2, size=16).astype(np.float64), y_pred=3.0 * rng.normal(size=16)),
        "data1_soft": dict(y_true=rng.uniform(size=(4, 5)), y_pred=3.0 * rng.normal(size=(4, 5))),
        "data2_extreme30": dict(
            y_true=np.array([1.0, 1.0, 0.0, 0.0, 0.3, 0.3, 1.0, 0.0]),
            y_pred=np.array([30.0, -30.0, 30.0, -30.0, 30.0, -30.0, 0.0, 0.0]),
        ),
        "data3_extreme1e4": dict(
            y_true=np.array([1.0, 1.0, 0.0, 0.0, 0.3, 0.3]),
            y_pred=np.array([1e4, -1e4, 1e4, -1e4, 1e4, -1e4]),
        ),
    }
    for dname, inputs in data.items():
        prefix = f"focal/{dname}"
        keys = put_inputs(prefix, inputs)
        for alpha in (0.25, None):
            for gamma in (0.0, 0.5, 2.0):
                if dname == "data3_extreme1e4" and 0 < gamma < 1:
                    # torchvision's (1-p_t)**gamma has an infinite derivative at 1-p_t == 0
                    # (p = sigmoid(1e4) == 1 exactly): autograd gives nan, nothing to record
                    continue
                for red in REDUCTIONS:
                    tv_alpha = -1 if alpha is None else alpha
                    record(
                        loss="focal", prefix=prefix, variant=f"alpha{alpha}_gamma{gamma}", reduction=red,
                        function="focal", arg_names=["y_true", "y_pred"], keys=keys,
                        kwargs={"alpha": alpha, "gamma": gamma, "from_logits": True},
                        grad_wrt=["y_pred"],
                        compute=lambda t, red=red, a=tv_alpha, g=gamma: focal_fn(
                            t["y_pred"], t["y_true"], alpha=a, gamma=g, reduction=red
                        ),
                        peer=peer, source=src,
                        peer_call=(
                            f"torchvision.ops.sigmoid_focal_loss(inputs=y_pred, targets=y_true, "
                            f"alpha={tv_alpha}, gamma={gamma}, reduction={red!r})"
                        ),
                        note=(
                            "torchvision forms 1-p_t from p = sigmoid(z), and torch's BCE-with-logits term "
                            "cancels |z|-sized parts: per-element values/gradients that are tiny (<1e-12) carry "
                            "up to ~1e-2 relative (~ulp(|z|) absolute) error; compare with an absolute tolerance"
                            if "extreme" in dname else ""
                        ),
                    )


# --------------------------------------------------------------------------- 6. triplet


_REDUCTION_ENUM = {"none": 0, "mean": 1, "sum": 2}  # torch.nn._reduction.get_enum


def torch_triplet(a, p_, n, margin, p, swap, reduction):
    if margin > 0:
        return F.triplet_margin_loss(a, p_, n, margin=margin, p=p, eps=1e-6, swap=swap, reduction=reduction)
    # margin == 0: the wrapper raises; call the op it wraps (same arguments)
    return torch.triplet_margin_loss(a, p_, n, margin, p, 1e-6, swap, _REDUCTION_ENUM[reduction])


def gen_triplet():
    rng = np.random.default_rng(606)
    N, D = 6, 4
    a = rng.normal(size=(N, D))
    data = {
        "data0": dict(anchor=a, positive=a + 0.8 * rng.normal(size=(N, D)), negative=a + 1.2 * rng.normal(size=(N, D))),
    }
    a1 = rng.normal(size=(N, D))
    pos1 = a1 + 0.7 * rng.normal(size=(N, D))
    pos1[:2] = a1[:2]  # positive == anchor: zero distance (d = ||eps||_p)
    data["data1_pos_eq_anchor"] = dict(anchor=a1, positive=pos1, negative=a1 + 1.0 * rng.normal(size=(N, D)))
    names = ["anchor", "positive", "negative"]
    for dname, inputs in data.items():
        prefix = f"triplet/{dname}"
        keys = put_inputs(prefix, inputs)
        for p in (1, 2, 3):
            for swap in (False, True):
                for margin in (1.0, 0.0, 0.3):
                    for red in REDUCTIONS:
                        record(
                            loss="triplet", prefix=prefix, variant=f"p{p}_swap{int(swap)}_margin{margin}",
                            reduction=red, function="triplet", arg_names=names, keys=keys,
                            kwargs={"margin": margin, "p": float(p), "eps": 1e-6, "swap": swap},
                            grad_wrt=names,
                            compute=lambda t, red=red, p=p, swap=swap, m=margin: torch_triplet(
                                t["anchor"], t["positive"], t["negative"], m, p, swap, red
                            ),
                            peer=TORCH, source="package",
                            peer_call=(
                                (
                                    f"torch.nn.functional.triplet_margin_loss(anchor, positive, negative, margin={margin}, "
                                    f"p={p}, eps=1e-6, swap={swap}, reduction={red!r})"
                                )
                                if margin > 0
                                else (
                                    f"torch.triplet_margin_loss(anchor, positive, negative, 0.0, {p}, 1e-6, {swap}, "
                                    f"reduction_enum={_REDUCTION_ENUM[red]})  # {red!r}"
                                )
                            ),
                            note=(
                                "torch's Python wrapper F.triplet_margin_loss rejects margin <= 0 (ValueError); "
                                "recorded with the ATen op it wraps, torch.triplet_margin_loss"
                                if margin == 0
                                else ""
                            ),
                        )
    # cross-check torch's distance convention d = ||u - v + eps||_p
    t = {k: torch.tensor(v) for k, v in data["data0"].items()}
    for p in (1, 2, 3):
        got = F.triplet_margin_loss(t["anchor"], t["positive"], t["negative"], margin=1.0, p=p, eps=1e-6, reduction="none")
        dp = torch.linalg.vector_norm(t["anchor"] - t["positive"] + 1e-6, ord=p, dim=-1)
        dn = torch.linalg.vector_norm(t["anchor"] - t["negative"] + 1e-6, ord=p, dim=-1)
        CHECKS[f"triplet p={p}: max |torch - max(||a-p+eps||-||a-n+eps||+margin,0)|"] = maxdiff(
            got, torch.clamp(dp - dn + 1.0, min=0)
        )


# --------------------------------------------------------------------------- 7. info_nce


def gen_info_nce():
    rng = np.random.default_rng(707)
    N, D, M = 6, 5, 7
    q = rng.normal(size=(N, D))
    data = {
        "data0_inbatch": (dict(anchor=q, positive=q + 0.5 * rng.normal(size=(N, D))), None),
        "data1_unpaired": (
            dict(anchor=q, positive=q + 0.5 * rng.normal(size=(N, D)), negatives=rng.normal(size=(M, D))),
            "unpaired",
        ),
        "data2_paired": (
            dict(anchor=q, positive=q + 0.5 * rng.normal(size=(N, D)), negatives=rng.normal(size=(N, M, D))),
            "paired",
        ),
    }
    for dname, (inputs, mode) in data.items():
        prefix = f"info_nce/{dname}"
        keys = put_inputs(prefix, inputs)
        names = list(inputs)
        for tau in (0.1, 0.5):
            for red in REDUCTIONS:

                def compute(t, red=red, tau=tau, mode=mode):
                    loss_fn = InfoNCE(temperature=tau, reduction=red, negative_mode=mode or "unpaired")
                    return loss_fn(t["anchor"], t["positive"], t.get("negatives"))

                record(
                    loss="info_nce", prefix=prefix, variant=f"tau{tau}", reduction=red, function="info_nce",
                    arg_names=names, keys=keys, kwargs={"temperature": tau, "similarity": "cosine"},
                    grad_wrt=names, compute=compute, peer=INFONCE, source="package",
                    peer_call=(
                        f"info_nce.InfoNCE(temperature={tau}, reduction={red!r}, negative_mode="
                        f"{(mode or 'unpaired')!r})(query=anchor, positive_key=positive, "
                        f"negative_keys={'negatives' if mode else None})"
                    ),
                )


# --------------------------------------------------------------------------- 8. nt_xent


def simclr_nt_xent(z_i, z_j, tau, reduction):
    """Direct SimCLR NT-Xent: 2N rows, positive = the other view, denominator over the 2N-1 others."""
    n = z_i.shape[0]
    z = F.normalize(torch.cat([z_i, z_j], dim=0), dim=1)
    sim = z @ z.T / tau
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target, reduction=reduction)


def gen_nt_xent():
    rng = np.random.default_rng(808)
    N, D = 5, 4
    zi = rng.normal(size=(N, D))
    data = {"data0": dict(z_i=zi, z_j=zi + 0.6 * rng.normal(size=(N, D)))}
    zi2 = rng.normal(size=(4, 3))
    data["data1_unrelated"] = dict(z_i=zi2, z_j=rng.normal(size=(4, 3)))
    for dname, inputs in data.items():
        prefix = f"nt_xent/{dname}"
        keys = put_inputs(prefix, inputs)
        for tau in (0.5, 0.1, 0.07):
            tz = {k: torch.tensor(v) for k, v in inputs.items()}
            n = tz["z_i"].shape[0]
            pml = NTXentLoss(temperature=tau)(torch.cat([tz["z_i"], tz["z_j"]]), torch.cat([torch.arange(n)] * 2))
            direct = simclr_nt_xent(tz["z_i"], tz["z_j"], tau, "mean")
            chk = {"|PML NTXentLoss - SimCLR mean over 2N rows|": maxdiff(pml, direct)}
            CHECKS[f"nt_xent {dname} tau={tau}: |PML - SimCLR 2N mean|"] = chk["|PML NTXentLoss - SimCLR mean over 2N rows|"]
            record(
                loss="nt_xent", prefix=prefix, variant=f"tau{tau}_pml", reduction="mean", function="nt_xent",
                arg_names=["z_i", "z_j"], keys=keys, kwargs={"temperature": tau}, grad_wrt=["z_i", "z_j"],
                compute=lambda t, tau=tau: NTXentLoss(temperature=tau)(
                    torch.cat([t["z_i"], t["z_j"]]), torch.cat([torch.arange(t["z_i"].shape[0])] * 2)
                ),
                peer=PML, source="package",
                peer_call=(
                    f"pytorch_metric_learning.losses.NTXentLoss(temperature={tau})(embeddings=cat(z_i, z_j), "
                    "labels=cat(arange(N), arange(N)))"
                ),
                note="PML averages over its 2N positive pairs (one per row): same as the SimCLR mean over 2N rows",
                checks=chk,
            )
            for red in REDUCTIONS:
                record(
                    loss="nt_xent", prefix=prefix, variant=f"tau{tau}_simclr", reduction=red, function="nt_xent",
                    arg_names=["z_i", "z_j"], keys=keys, kwargs={"temperature": tau}, grad_wrt=["z_i", "z_j"],
                    compute=lambda t, tau=tau, red=red: simclr_nt_xent(t["z_i"], t["z_j"], tau, red),
                    peer=TORCH, source="formula",
                    peer_call=(
                        "z = F.normalize(cat(z_i, z_j)); sim = z z^T / tau with the diagonal set to -inf; "
                        f"F.cross_entropy(sim, target=[N..2N-1, 0..N-1], reduction={red!r})"
                    ),
                    checks=chk if red == "mean" else {},
                )


# --------------------------------------------------------------------------- 9. arcface / cosface


def margin_logits_formula(x, labels, weight, s, m, kind, easy_margin=False):
    """InsightFace ArcFace (``ArcMarginProduct``) / CosFace logits, W of shape (C, D)."""
    cosine = F.linear(F.normalize(x), F.normalize(weight))
    one_hot = F.one_hot(labels, weight.shape[0]).to(cosine.dtype)
    if kind == "cosface":
        return s * (cosine - one_hot * m)
    sine = torch.sqrt((1.0 - torch.pow(cosine, 2)).clamp(0, 1))
    phi = cosine * math.cos(m) - sine * math.sin(m)
    if easy_margin:
        phi = torch.where(cosine > 0, phi, cosine)
    else:
        th = math.cos(math.pi - m)
        mm = math.sin(math.pi - m) * m
        phi = torch.where(cosine > th, phi, cosine - mm)
    return s * (one_hot * phi + (1.0 - one_hot) * cosine)


def gen_arcface():
    rng = np.random.default_rng(909)
    N, D, C = 8, 5, 4
    W = rng.normal(size=(C, D))
    labels = rng.integers(0, C, size=N)
    labels[:4] = [0, 1, 2, 3]
    x = rng.normal(size=(N, D))
    # rows 0, 1: nearly opposite their class weight -> cos(theta) < cos(pi - m): fallback branch
    wn = W / np.linalg.norm(W, axis=1, keepdims=True)
    x[0] = -2.0 * wn[0] + 0.05 * rng.normal(size=D)
    x[1] = -1.5 * wn[1] + 0.10 * rng.normal(size=D)
    # row 2: close to its class (small theta); row 3: cos(theta) slightly negative (easy_margin branch)
    x[2] = 3.0 * wn[2] + 0.3 * rng.normal(size=D)
    v = rng.normal(size=D)
    v -= (v @ wn[3]) * wn[3]
    x[3] = v / np.linalg.norm(v) - 0.2 * wn[3]
    prefix = "arcface/data0"
    keys = put_inputs(prefix, dict(embeddings=x, labels=labels, weight=W))
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ wn.T
    ct = cos[np.arange(N), labels]
    CHECKS["arcface data0: cos(theta_target) per row"] = [round(float(c), 4) for c in ct]
    names = ["embeddings", "labels", "weight"]

    def pml_loss(cls, t, margin, scale):
        loss_fn = cls(num_classes=C, embedding_size=D, margin=margin, scale=scale)
        # PML stores W as a (D, C) Parameter; ours is (C, D). Replace the Parameter by the
        # transposed view of our leaf tensor so autograd reaches `weight` (checked equal to
        # PML's own W.grad.T when W stays a Parameter).
        del loss_fn.W
        loss_fn.W = t["weight"].T
        return loss_fn(t["embeddings"], t["labels"])

    # --- arcface: PML (margin in degrees) and the InsightFace formula
    for deg, s in ((28.6, 64.0), (20.0, 30.0)):
        m = float(np.radians(deg))
        t0 = {k: _to_torch(STORE[v], False) for k, v in keys.items()}
        pml_val = pml_loss(ArcFaceLoss, t0, deg, s)
        formula_val = F.cross_entropy(margin_logits_formula(t0["embeddings"], t0["labels"], t0["weight"], s, m, "arcface"), t0["labels"])
        chk = {"|PML ArcFaceLoss - InsightFace formula| (mean)": maxdiff(pml_val, formula_val)}
        CHECKS[f"arcface deg={deg} s={s}: |PML - InsightFace formula|"] = chk["|PML ArcFaceLoss - InsightFace formula| (mean)"]
        record(
            loss="arcface", prefix=prefix, variant=f"pml_margin{deg}deg_s{s}", reduction="mean", function="arcface",
            arg_names=names, keys=keys, kwargs={"s": s, "m": m, "easy_margin": False},
            grad_wrt=["embeddings", "weight"],
            compute=lambda t, deg=deg, s=s: pml_loss(ArcFaceLoss, t, deg, s),
            peer=PML, source="package",
            peer_call=(
                f"pytorch_metric_learning.losses.ArcFaceLoss(num_classes={C}, embedding_size={D}, margin={deg}, "
                f"scale={s}) with loss.W = weight.T; loss(embeddings, labels)"
            ),
            note=f"m = np.radians({deg}) (PML's margin is in degrees); PML's W is (D, C), recorded as ours (C, D)",
            checks=chk,
        )
    for s, m in ((64.0, 0.5), (64.0, float(np.radians(28.6))), (30.0, 0.3)):
        for easy in (False, True):
            for red in REDUCTIONS:
                record(
                    loss="arcface", prefix=prefix, variant=f"insightface_s{s}_m{m:.6g}_easy{int(easy)}", reduction=red,
                    function="arcface", arg_names=names, keys=keys, kwargs={"s": s, "m": m, "easy_margin": easy},
                    grad_wrt=["embeddings", "weight"],
                    compute=lambda t, s=s, m=m, easy=easy, red=red: F.cross_entropy(
                        margin_logits_formula(t["embeddings"], t["labels"], t["weight"], s, m, "arcface", easy),
                        t["labels"], reduction=red,
                    ),
                    peer=TORCH, source="formula",
                    peer_call=(
                        "InsightFace ArcMarginProduct: cos = normalize(x) normalize(W)^T; sin = sqrt(clamp(1-cos^2,0,1)); "
                        "phi = cos*cos(m) - sin*sin(m); "
                        + ("phi = where(cos > 0, phi, cos)" if easy else "phi = where(cos > cos(pi-m), phi, cos - sin(pi-m)*m)")
                        + f"; F.cross_entropy(s*(onehot*phi + (1-onehot)*cos), labels, reduction={red!r})"
                    ),
                )
    # --- cosface (same data, stored again under cosface/)
    prefix = "cosface/data0"
    keys = put_inputs(prefix, dict(embeddings=x, labels=labels, weight=W))
    for m, s in ((0.35, 64.0), (0.2, 30.0)):
        t0 = {k: _to_torch(STORE[v], False) for k, v in keys.items()}
        pml_val = pml_loss(CosFaceLoss, t0, m, s)
        formula_val = F.cross_entropy(margin_logits_formula(t0["embeddings"], t0["labels"], t0["weight"], s, m, "cosface"), t0["labels"])
        chk = {"|PML CosFaceLoss - formula| (mean)": maxdiff(pml_val, formula_val)}
        CHECKS[f"cosface m={m} s={s}: |PML - formula|"] = chk["|PML CosFaceLoss - formula| (mean)"]
        record(
            loss="cosface", prefix=prefix, variant=f"pml_m{m}_s{s}",
            reduction="mean", function="cosface", arg_names=names, keys=keys, kwargs={"s": s, "m": m},
            grad_wrt=["embeddings", "weight"],
            compute=lambda t, m=m, s=s: pml_loss(CosFaceLoss, t, m, s),
            peer=PML, source="package",
            peer_call=(
                f"pytorch_metric_learning.losses.CosFaceLoss(num_classes={C}, embedding_size={D}, margin={m}, "
                f"scale={s}) with loss.W = weight.T; loss(embeddings, labels)"
            ),
            note="PML's W is (D, C), recorded as ours (C, D)", checks=chk,
        )
        for red in REDUCTIONS:
            record(
                loss="cosface", prefix=prefix, variant=f"formula_m{m}_s{s}", reduction=red,
                function="cosface", arg_names=names, keys=keys, kwargs={"s": s, "m": m},
                grad_wrt=["embeddings", "weight"],
                compute=lambda t, m=m, s=s, red=red: F.cross_entropy(
                    margin_logits_formula(t["embeddings"], t["labels"], t["weight"], s, m, "cosface"),
                    t["labels"], reduction=red,
                ),
                peer=TORCH, source="formula",
                peer_call=f"F.cross_entropy(s*(cos - m*onehot), labels, reduction={red!r}), cos = normalize(x) normalize(W)^T",
            )


# --------------------------------------------------------------------------- 10. supcon


def supcon_reference(features, labels, temperature, base_temperature, eps_in_log=1e-9):
    """HobbitLong/SupContrast losses.py SupConLoss.forward, contrast_mode='all', verbatim
    (features (bsz, n_views, D), already normalised; returns the mean)."""
    device = features.device
    batch_size = features.shape[0]
    if labels is None:
        mask = torch.eye(batch_size, dtype=torch.float32).to(device)
    else:
        labels = labels.contiguous().view(-1, 1)
        mask = torch.eq(labels, labels.T).float().to(device)
    contrast_count = features.shape[1]
    contrast_feature = torch.cat(torch.unbind(features, dim=1), dim=0)
    anchor_feature = contrast_feature
    anchor_count = contrast_count
    anchor_dot_contrast = torch.div(torch.matmul(anchor_feature, contrast_feature.T), temperature)
    logits_max, _ = torch.max(anchor_dot_contrast, dim=1, keepdim=True)
    logits = anchor_dot_contrast - logits_max.detach()
    mask = mask.repeat(anchor_count, contrast_count)
    logits_mask = torch.scatter(
        torch.ones_like(mask), 1, torch.arange(batch_size * anchor_count).view(-1, 1).to(device), 0
    )
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True) + eps_in_log)
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    loss = -(temperature / base_temperature) * mean_log_prob_pos
    loss = loss.view(anchor_count, batch_size).mean()
    return loss


def supcon_exact(features, labels, temperature, base_temperature, reduction):
    """The spec's SupCon: the reference without its +1e-9 inside the log, anchors with no
    positive give 0 and are left out of the mean (as PML), per-anchor output in view-major
    order (row v*N + i). ``features`` (N, V, D) already normalised."""
    n, v = features.shape[0], features.shape[1]
    z = torch.cat(torch.unbind(features, dim=1), dim=0)  # (V*N, D) view-major
    lab = torch.arange(n) if labels is None else labels
    lab = lab.repeat(v)
    logits = z @ z.T / temperature
    self_mask = torch.eye(n * v, dtype=torch.bool)
    pos = (lab[:, None] == lab[None, :]) & ~self_mask
    log_prob = logits - torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
    npos = pos.sum(1)
    has = npos > 0
    mlpp = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(1) / npos.clamp(min=1)
    per = -(temperature / base_temperature) * mlpp
    per = torch.where(has, per, torch.zeros_like(per))
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    if not bool(has.any()):
        return (features * 0).sum()
    return per.sum() / has.sum()


def gen_supcon():
    rng = np.random.default_rng(1010)
    # (N, V, D) with labels / labels=None: the authors' reference
    N, V, D = 6, 2, 5
    f3 = rng.normal(size=(N, V, D))
    lab3 = np.array([0, 1, 0, 2, 1, 0])
    prefix = "supcon/data0_views"
    keys_l = put_inputs(prefix, dict(features=f3, labels=lab3))
    for tau, base in ((0.07, None), (0.1, None), (0.1, 0.07), (0.5, 0.07)):
        b = tau if base is None else base
        for use_labels in (True, False):
            names = ["features", "labels"] if use_labels else ["features"]
            kw = {"temperature": tau, "base_temperature": base, "normalize": True}
            var = f"tau{tau}_base{base}_{'labels' if use_labels else 'nolabels'}"
            # cross-checks
            t0 = {k: _to_torch(STORE[v], False) for k, v in keys_l.items()}
            fn = F.normalize(t0["features"], dim=-1)
            lab = t0["labels"] if use_labels else None
            ref = supcon_reference(fn, lab, tau, b)
            ref_noeps = supcon_reference(fn, lab, tau, b, eps_in_log=0.0)
            ex = supcon_exact(fn, lab, tau, b, "mean")
            chk = {
                "|reference (verbatim, +1e-9 in log) - exact formula|": maxdiff(ref, ex),
                "|reference without the +1e-9 - exact formula|": maxdiff(ref_noeps, ex),
            }
            if base is None:
                flat = torch.cat(torch.unbind(fn, dim=1), dim=0)
                lab_flat = (t0["labels"] if use_labels else torch.arange(N)).repeat(V)
                chk["|PML SupConLoss on (N*V, D) - exact formula|"] = maxdiff(SupConLoss(temperature=tau)(flat, lab_flat), ex)
            for k, val in chk.items():
                CHECKS[f"supcon {var}: {k}"] = val
            record(
                loss="supcon", prefix=prefix, variant=var + "_reference", reduction="mean", function="supcon",
                arg_names=names, keys=keys_l, kwargs=kw, grad_wrt=["features"],
                compute=lambda t, tau=tau, b=b, ul=use_labels: supcon_reference(
                    F.normalize(t["features"], dim=-1), t["labels"] if ul else None, tau, b
                ),
                peer="HobbitLong/SupContrast losses.py (commit 02f458c, run verbatim in " + TORCH + ")",
                source="package",
                peer_call=(
                    f"SupConLoss(temperature={tau}, contrast_mode='all', base_temperature={b})"
                    f"(F.normalize(features, dim=-1), labels={'labels' if use_labels else None})"
                ),
                note="the reference adds 1e-9 inside its log-sum: see checks for its size against the exact formula",
                checks=chk,
            )
            for red in REDUCTIONS:
                record(
                    loss="supcon", prefix=prefix, variant=var + "_exact", reduction=red, function="supcon",
                    arg_names=names, keys=keys_l, kwargs=kw, grad_wrt=["features"],
                    compute=lambda t, tau=tau, b=b, ul=use_labels, red=red: supcon_exact(
                        F.normalize(t["features"], dim=-1), t["labels"] if ul else None, tau, b, red
                    ),
                    peer=TORCH, source="formula",
                    peer_call=(
                        "the reference's formula without its +1e-9, per anchor in view-major order "
                        f"(row v*N+i), anchors without positives left out of the mean; reduction={red!r}"
                    ),
                    checks=chk if red == "mean" else {},
                )
    # (N, D) features with labels: PML SupConLoss (one view); data1 has a singleton label
    f2 = rng.normal(size=(8, 4))
    datasets = {
        "data1_flat_singleton": (f2, np.array([0, 1, 0, 2, 1, 0, 3, 1])),  # label 2 and 3 are singletons
        "data2_flat_all_paired": (rng.normal(size=(6, 4)), np.array([0, 1, 0, 1, 2, 2])),
        "data3_flat_no_positive": (rng.normal(size=(4, 3)), np.array([0, 1, 2, 3])),
    }
    for dname, (f, lab) in datasets.items():
        prefix = f"supcon/{dname}"
        keys = put_inputs(prefix, dict(features=f, labels=lab))
        for tau in (0.07, 0.2):
            kw = {"temperature": tau, "base_temperature": None, "normalize": True}
            t0 = {k: _to_torch(STORE[v], False) for k, v in keys.items()}
            fn = F.normalize(t0["features"], dim=-1)
            pml_val = SupConLoss(temperature=tau)(t0["features"], t0["labels"])
            ex = supcon_exact(fn[:, None, :], t0["labels"], tau, tau, "mean")
            chk = {"|PML SupConLoss - exact formula|": maxdiff(pml_val, ex)}
            if dname == "data2_flat_all_paired":
                chk["|reference (verbatim) on (N, 1, D) - PML|"] = maxdiff(supcon_reference(fn[:, None, :], t0["labels"], tau, tau), pml_val)
            if dname == "data1_flat_singleton":
                # the reference divides 0 by 0 for anchors without positives and averages over all anchors
                ref = supcon_reference(fn[:, None, :], t0["labels"], tau, tau)
                chk["reference (verbatim) value with singleton labels"] = float(ref)
            for k, val in chk.items():
                CHECKS[f"supcon {dname} tau={tau}: {k}"] = val
            record(
                loss="supcon", prefix=prefix, variant=f"tau{tau}_pml", reduction="mean", function="supcon",
                arg_names=["features", "labels"], keys=keys, kwargs=kw, grad_wrt=["features"],
                compute=lambda t, tau=tau: SupConLoss(temperature=tau)(t["features"], t["labels"]),
                peer=PML, source="package",
                peer_call=f"pytorch_metric_learning.losses.SupConLoss(temperature={tau})(embeddings=features, labels=labels)",
                note=(
                    "PML normalises internally (cosine); its AvgNonZeroReducer leaves anchors without positives "
                    "out of the mean; with no positive at all it returns 0 (recorded gradient: zeros)"
                ),
                checks=chk,
            )
            for red in REDUCTIONS:
                record(
                    loss="supcon", prefix=prefix, variant=f"tau{tau}_exact", reduction=red, function="supcon",
                    arg_names=["features", "labels"], keys=keys, kwargs=kw, grad_wrt=["features"],
                    compute=lambda t, tau=tau, red=red: supcon_exact(
                        F.normalize(t["features"], dim=-1)[:, None, :], t["labels"], tau, tau, red
                    ),
                    peer=TORCH, source="formula",
                    peer_call=f"exact SupCon formula on the (N, 1, D) view of the normalised features, reduction={red!r}",
                    checks=chk if red == "mean" else {},
                )


# --------------------------------------------------------------------------- 11. GAN losses


def gen_gan():
    rng = np.random.default_rng(1111)
    N = 8
    # lsgan
    prefix = "lsgan_discriminator/data0"
    keys = put_inputs(prefix, dict(d_real=rng.normal(size=N), d_fake=rng.normal(size=N)))
    for a, b in ((0.0, 1.0), (-1.0, 1.0)):
        for red in REDUCTIONS:

            def compute(t, a=a, b=b, red=red):
                tr = 0.5 * (t["d_real"] - b) ** 2
                tf = 0.5 * (t["d_fake"] - a) ** 2
                if red == "none":
                    return (tr, tf)
                if red == "sum":
                    return tr.sum() + tf.sum()
                return tr.mean() + tf.mean()

            record(
                loss="lsgan_discriminator", prefix=prefix, variant=f"a{a}_b{b}", reduction=red,
                function="lsgan_discriminator", arg_names=["d_real", "d_fake"], keys=keys,
                kwargs={"a": a, "b": b}, grad_wrt=["d_real", "d_fake"], compute=compute, peer=TORCH,
                source="formula",
                peer_call=f"0.5*mean((d_real-b)^2) + 0.5*mean((d_fake-a)^2) [reduction={red!r}: "
                "'sum' adds the sums, 'none' gives the two halved per-element arrays]",
            )
    prefix = "lsgan_generator/data0"
    keys = put_inputs(prefix, dict(d_fake=rng.normal(size=(4, 3))))
    for c in (1.0, 0.0):
        for red in REDUCTIONS:
            record(
                loss="lsgan_generator", prefix=prefix, variant=f"c{c}", reduction=red,
                function="lsgan_generator", arg_names=["d_fake"], keys=keys, kwargs={"c": c},
                grad_wrt=["d_fake"],
                compute=lambda t, c=c, red=red: 0.5 * F.mse_loss(t["d_fake"], torch.full_like(t["d_fake"], c), reduction=red),
                peer=TORCH, source="formula",
                peer_call=f"0.5 * F.mse_loss(d_fake, full_like(d_fake, c), reduction={red!r})",
            )
    # gan (non-saturating), logits and probabilities
    zr = np.concatenate([2.0 * rng.normal(size=6), [30.0, -30.0]])
    zf = np.concatenate([2.0 * rng.normal(size=6), [-30.0, 30.0]])
    pr = rng.uniform(1e-3, 1 - 1e-3, size=N)
    pf = rng.uniform(1e-3, 1 - 1e-3, size=N)
    for fl, (dr, df) in ((True, (zr, zf)), (False, (pr, pf))):
        tag = "logits" if fl else "probs"
        bce = F.binary_cross_entropy_with_logits if fl else F.binary_cross_entropy
        bname = "binary_cross_entropy_with_logits" if fl else "binary_cross_entropy"
        prefix = f"gan_discriminator/{tag}_data0"
        keys = put_inputs(prefix, dict(d_real=dr, d_fake=df))
        for red in REDUCTIONS:

            def compute(t, red=red, bce=bce):
                tr = 0.5 * bce(t["d_real"], torch.ones_like(t["d_real"]), reduction="none")
                tf = 0.5 * bce(t["d_fake"], torch.zeros_like(t["d_fake"]), reduction="none")
                if red == "none":
                    return (tr, tf)
                if red == "sum":
                    return tr.sum() + tf.sum()
                return tr.mean() + tf.mean()

            record(
                loss="gan_discriminator", prefix=prefix, variant="default", reduction=red,
                function="gan_discriminator", arg_names=["d_real", "d_fake"], keys=keys,
                kwargs={"from_logits": fl}, grad_wrt=["d_real", "d_fake"], compute=compute, peer=TORCH,
                source="formula",
                peer_call=f"0.5*F.{bname}(d_real, 1) + 0.5*F.{bname}(d_fake, 0) [reduction={red!r}]",
                note="" if fl else "D outputs inside [1e-3, 1-1e-3]",
            )
        prefix = f"gan_generator/{tag}_data0"
        keys = put_inputs(prefix, dict(d_fake=df))
        for red in REDUCTIONS:
            record(
                loss="gan_generator", prefix=prefix, variant="default", reduction=red,
                function="gan_generator", arg_names=["d_fake"], keys=keys, kwargs={"from_logits": fl},
                grad_wrt=["d_fake"],
                compute=lambda t, red=red, bce=bce: 0.5 * bce(t["d_fake"], torch.ones_like(t["d_fake"]), reduction=red),
                peer=TORCH, source="formula",
                peer_call=f"0.5*F.{bname}(d_fake, ones_like(d_fake), reduction={red!r})",
                note="" if fl else "D outputs inside [1e-3, 1-1e-3]",
            )
    # cycle consistency
    x = rng.normal(size=(4, 3))
    xc = x + 0.3 * rng.normal(size=(4, 3))
    xc[0, 0] = x[0, 0]  # equal element: subgradient 0
    y = rng.normal(size=(4, 3))
    yc = y + 0.3 * rng.normal(size=(4, 3))
    y2 = rng.normal(size=(5, 2))
    data = {
        "data0": dict(x=x, x_cycled=xc, y=y, y_cycled=yc),
        "data1_different_shapes": dict(x=x, x_cycled=xc, y=y2, y_cycled=y2 + 0.3 * rng.normal(size=(5, 2))),
    }
    names = ["x", "x_cycled", "y", "y_cycled"]
    for dname, inputs in data.items():
        prefix = f"cycle_consistency/{dname}"
        keys = put_inputs(prefix, inputs)
        for w in (1.0, 10.0):
            for red in REDUCTIONS:

                def compute(t, w=w, red=red):
                    a = w * F.l1_loss(t["x_cycled"], t["x"], reduction="none")
                    b = w * F.l1_loss(t["y_cycled"], t["y"], reduction="none")
                    if red == "none":
                        return (a, b)
                    if red == "sum":
                        return a.sum() + b.sum()
                    return a.mean() + b.mean()

                record(
                    loss="cycle_consistency", prefix=prefix, variant=f"weight{w}", reduction=red,
                    function="cycle_consistency", arg_names=names, keys=keys, kwargs={"weight": w},
                    grad_wrt=["x_cycled", "y_cycled"], compute=compute, peer=TORCH, source="formula",
                    peer_call=f"weight*(F.l1_loss(x_cycled, x) + F.l1_loss(y_cycled, y)) [reduction={red!r}]",
                    note="x and y of different shapes" if "different" in dname else "",
                )


# --------------------------------------------------------------------------- cross-checks

CHECKS: dict = {}


def entry_pair_checks():
    """Relative max differences (value, then each gradient) between entries that must agree."""
    by_id = {e["id"]: e for e in CASES}

    def rel(a, b):
        a, b = STORE[a], STORE[b]
        return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))

    pairs = [
        ("arcface/data0/pml_margin28.6deg_s64.0/mean", "arcface/data0/insightface_s64.0_m0.499164_easy0/mean"),
        ("cosface/data0/pml_m0.35_s64.0/mean", "cosface/data0/formula_m0.35_s64.0/mean"),
        ("cosface/data0/pml_m0.2_s30.0/mean", "cosface/data0/formula_m0.2_s30.0/mean"),
        ("categorical_cross_entropy/logits_data0_int/plain/none", "categorical_cross_entropy/logits_data1_onehot/plain/none"),
        # sums agree; the means do not, by design (torch divides by sum of w[y] for labels, by N for dense targets)
        ("categorical_cross_entropy/logits_data0_int/weight_ls0.1/sum", "categorical_cross_entropy/logits_data1_onehot/weight_ls0.1/sum"),
    ]
    for tau in (0.5, 0.1, 0.07):
        for dn in ("data0", "data1_unrelated"):
            pairs.append((f"nt_xent/{dn}/tau{tau}_pml/mean", f"nt_xent/{dn}/tau{tau}_simclr/mean"))
    for e in CASES:
        if e["loss"] == "supcon" and e["id"].endswith("_reference/mean"):
            pairs.append((e["id"], e["id"].replace("_reference/", "_exact/")))
        if e["loss"] == "supcon" and e["id"].endswith("_pml/mean"):
            pairs.append((e["id"], e["id"].replace("_pml/", "_exact/")))
    for a, b in pairs:
        ea, eb = by_id[a], by_id[b]
        out = {"value": rel(ea["value"], eb["value"])}
        for n, ga, gb in zip(ea["grad_wrt"], ea["grads"], eb["grads"]):
            out[f"grad_{n}"] = rel(ga, gb)
        CHECKS[f"relative max diff {a} vs {b}"] = out


# --------------------------------------------------------------------------- main


def main():
    gen_mse()
    gen_bce()
    gen_cce()
    gen_huber()
    gen_focal()
    gen_triplet()
    gen_info_nce()
    gen_nt_xent()
    gen_arcface()
    gen_supcon()
    gen_gan()
    entry_pair_checks()
    index = {
        "format": 1,
        "generator": "tests/peers/generate_peer_values.py",
        "versions": VERSIONS,
        "conventions": (
            "numbaloss call: nl.<function>(*[npz[k] for k in args], **kwargs, **{n: npz[k] for n, k in "
            "array_kwargs.items()}); targets first, predictions second; class axis last; gradients of the "
            "returned value (of the sum for reduction='none'), in the order of grad_wrt; kwargs value null "
            "means Python None; a 'value' that is a list of keys is a tuple (two-term losses, reduction 'none')."
        ),
        "cross_checks": CHECKS,
        "cases": CASES,
    }
    STORE["index"] = np.array(json.dumps(index, indent=1, sort_keys=True))
    np.savez_compressed(OUT, **STORE)
    print(f"wrote {OUT}: {len(CASES)} cases, {len(STORE)} arrays, {os.path.getsize(OUT)} bytes")
    for k, v in CHECKS.items():
        print(f"  check {k}: {v}")


if __name__ == "__main__":
    main()
