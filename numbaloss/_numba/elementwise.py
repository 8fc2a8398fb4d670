"""Numba loops of the elementwise losses, written once and compiled per term.

Every loop walks the flattened input in chunks of ``CHUNK`` elements (one prange
iteration each, so the summation order, and hence the result, does not depend on
the thread count), accumulates in float64, and checks each element against the
term's domain in the same pass (``bounds = (y_lo, y_hi, z_lo, z_hi)``; a value
outside sets a bit of the returned flags, NaN sets none).

The loops are compiled with ``fastmath={"reassoc"}`` so that the float64
accumulation vectorizes; the point functions are separate functions whose
instructions keep strict semantics (see ``points``).  The result depends on the
chunking and the vector width, not on the thread count.

Sample weights are one per row of ``m`` consecutive elements; ``w`` is empty
when there are none, and then the caller passes ``m = n`` so that every chunk is
a single row segment and the inner loop runs unbroken.

``specialise(term)`` makes, for one term, a serial and a parallel copy of each
loop with the term's point functions bound as globals.  Each copy has its own
name, so Numba's on-disk cache (``cache=True``) keeps them apart; the name also
carries a hash of the point-function sources, because Numba's cache only watches
the file of the loop itself.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import points
from ._specialise import source_hash, specialise

# Loops are written `for i in range(count): e = start + i`: Numba's `range(start,
# stop)` with a non-zero start compiled here to a loop 50-80x slower (not vectorized).
CHUNK = 1 << 14
CHECK_DOMAIN = True  # rebound per compiled copy (see TermLoops)
_REASSOC = {"reassoc"}
#: Below this many elements the serial copy runs: two threads cost more than they give.
PARALLEL_THRESHOLD = 1 << 17

_SOURCES_HASH = source_hash(points)


@njit(inline="always")
def _domain_flags(y, z, bounds):
    if not CHECK_DOMAIN:  # a term without domains: the check compiles away
        return 0
    bad_y = 1 if (y < bounds[0]) | (y > bounds[1]) else 0
    bad_z = 2 if (z < bounds[2]) | (z > bounds[3]) else 0
    return bad_y | bad_z


@njit(inline="always")
def _combine(partial, flags):
    total = 0.0
    found = 0
    for c in range(partial.shape[0]):
        total += partial[c]
        found |= flags[c]
    return total, found


def value_sum(y, z, w, m, p, bounds):
    """Σ wᵢ·l(yₖ, zₖ) over all elements, and the domain flags."""
    n = z.shape[0]
    n_chunks = (n + CHUNK - 1) // CHUNK
    partial = np.zeros(n_chunks)
    flags = np.zeros(n_chunks, np.int64)
    for c in prange(n_chunks):
        k = c * CHUNK
        end = min(k + CHUNK, n)
        acc = 0.0
        found = 0
        while k < end:
            row = k // m
            seg_end = min((row + 1) * m, end)
            seg = 0.0
            for i in range(seg_end - k):
                e = k + i
                yy = np.float64(y[e])
                zz = np.float64(z[e])
                found |= _domain_flags(yy, zz, bounds)
                seg += value_grad(yy, zz, p)[0]
            acc += seg * (w[row] if w.shape[0] else 1.0)
            k = seg_end
        partial[c] = acc
        flags[c] = found
    return _combine(partial, flags)


def value_sum_and_grad(y, z, w, m, p, bounds, scale, grad):
    """Σ wᵢ·l over all elements; writes grad = scale·wᵢ·l′ (one fused pass)."""
    n = z.shape[0]
    n_chunks = (n + CHUNK - 1) // CHUNK
    partial = np.zeros(n_chunks)
    flags = np.zeros(n_chunks, np.int64)
    for c in prange(n_chunks):
        k = c * CHUNK
        end = min(k + CHUNK, n)
        acc = 0.0
        found = 0
        while k < end:
            row = k // m
            seg_end = min((row + 1) * m, end)
            wi = w[row] if w.shape[0] else 1.0
            s = scale * wi
            seg = 0.0
            for i in range(seg_end - k):
                e = k + i
                yy = np.float64(y[e])
                zz = np.float64(z[e])
                found |= _domain_flags(yy, zz, bounds)
                value, derivative = value_grad(yy, zz, p)
                seg += value
                grad[e] = s * derivative
            acc += seg * wi
            k = seg_end
        partial[c] = acc
        flags[c] = found
    return _combine(partial, flags)


def grad_only(y, z, w, m, p, bounds, scale, grad):
    """Writes grad = scale·wᵢ·l′; returns the domain flags."""
    n = z.shape[0]
    n_chunks = (n + CHUNK - 1) // CHUNK
    flags = np.zeros(n_chunks, np.int64)
    for c in prange(n_chunks):
        k = c * CHUNK
        end = min(k + CHUNK, n)
        found = 0
        while k < end:
            row = k // m
            seg_end = min((row + 1) * m, end)
            s = scale * (w[row] if w.shape[0] else 1.0)
            for i in range(seg_end - k):
                e = k + i
                yy = np.float64(y[e])
                zz = np.float64(z[e])
                found |= _domain_flags(yy, zz, bounds)
                grad[e] = s * value_grad(yy, zz, p)[1]
            k = seg_end
        flags[c] = found
    result = 0
    for c in range(n_chunks):
        result |= flags[c]
    return result


def value_none(y, z, w, m, p, bounds, scale, out, want_grad, grad):
    """Writes out = scale·wᵢ·l per element (and grad = scale·wᵢ·l′ if want_grad)."""
    n = z.shape[0]
    n_chunks = (n + CHUNK - 1) // CHUNK
    flags = np.zeros(n_chunks, np.int64)
    for c in prange(n_chunks):
        k = c * CHUNK
        end = min(k + CHUNK, n)
        found = 0
        while k < end:
            row = k // m
            seg_end = min((row + 1) * m, end)
            s = scale * (w[row] if w.shape[0] else 1.0)
            if want_grad:
                for i in range(seg_end - k):
                    e = k + i
                    yy = np.float64(y[e])
                    zz = np.float64(z[e])
                    found |= _domain_flags(yy, zz, bounds)
                    value, derivative = value_grad(yy, zz, p)
                    out[e] = s * value
                    grad[e] = s * derivative
            else:
                for i in range(seg_end - k):
                    e = k + i
                    yy = np.float64(y[e])
                    zz = np.float64(z[e])
                    found |= _domain_flags(yy, zz, bounds)
                    out[e] = s * value_grad(yy, zz, p)[0]
            k = seg_end
        flags[c] = found
    result = 0
    for c in range(n_chunks):
        result |= flags[c]
    return result


def grad_and_hess(y, z, w, m, p, bounds, grad, hess):
    """Writes grad = wᵢ·l′ and hess = wᵢ·l″ per element; returns the domain flags."""
    n = z.shape[0]
    n_chunks = (n + CHUNK - 1) // CHUNK
    flags = np.zeros(n_chunks, np.int64)
    for c in prange(n_chunks):
        k = c * CHUNK
        end = min(k + CHUNK, n)
        found = 0
        while k < end:
            row = k // m
            seg_end = min((row + 1) * m, end)
            wi = w[row] if w.shape[0] else 1.0
            for i in range(seg_end - k):
                e = k + i
                yy = np.float64(y[e])
                zz = np.float64(z[e])
                found |= _domain_flags(yy, zz, bounds)
                derivative, second = grad_hess(yy, zz, p)
                grad[e] = wi * derivative
                hess[e] = wi * second
            k = seg_end
        flags[c] = found
    result = 0
    for c in range(n_chunks):
        result |= flags[c]
    return result


_LOOPS = (value_sum, value_sum_and_grad, grad_only, value_none, grad_and_hess)


class TermLoops:
    """The compiled loops of one term: ``loops.get(loop name, n)`` (lazily compiled
    by Numba on the first call with each signature).  ``check_domain`` is False for
    terms whose inputs may be any real number."""

    def __init__(self, term: str, check_domain: bool):
        bound = {"value_grad": getattr(points, f"{term}_value_grad"), "CHECK_DOMAIN": check_domain}
        hess = getattr(points, f"{term}_grad_hess", None)
        names = [loop for loop in _LOOPS if loop is not grad_and_hess or hess is not None]
        if hess is not None:
            bound["grad_hess"] = hess
        tag = f"{term}__{'checked' if check_domain else 'unchecked'}__{_SOURCES_HASH}"
        self._serial = {f.__name__: specialise(f, tag, bound, False, _REASSOC) for f in names}
        self._parallel = {f.__name__: specialise(f, tag, bound, True, _REASSOC) for f in names}

    def get(self, loop: str, n: int):
        table = self._parallel if n >= PARALLEL_THRESHOLD else self._serial
        return table[loop]


_TERMS: dict[tuple, TermLoops] = {}


def loops_for(term: str, bounds: tuple) -> TermLoops:
    check_domain = any(abs(b) != np.inf for b in bounds)
    key = (term, check_domain)
    loops = _TERMS.get(key)
    if loops is None:
        loops = _TERMS[key] = TermLoops(term, check_domain)
    return loops
