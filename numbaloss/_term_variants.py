"""Cheaper elementwise terms for special parameter values, shared by the compiled
CPU backends (``numbaloss._numba.elementwise``, ``numbaloss._cython_backend``).

Focal loss with γ = 2 (the usual choice) has q^γ = q·q: its ``*_gamma2`` terms skip
the exp and log of exp(γ log q).  The CUDA kernels keep the general terms.
"""

from __future__ import annotations

#: term -> (index of a parameter, its value, the term to use instead for that value)
SPECIAL_CASES = {
    "focal_logits": (2, 2.0, "focal_logits_gamma2"),
    "focal_probs": (2, 2.0, "focal_probs_gamma2"),
}


def specialised(term: str, params: tuple) -> str:
    """The term to run for ``term`` with parameters ``params``."""
    special = SPECIAL_CASES.get(term)
    if special is not None and params[special[0]] == special[1]:
        return special[2]
    return term
