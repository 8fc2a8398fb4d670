"""Figures of the fuzz runs (tests/test_fuzz.py, the atheris target), printed at the
end of the pytest run by the ``pytest_terminal_summary`` hook that
``tests/conftest.py`` imports from here."""

from __future__ import annotations

from collections import Counter, defaultdict

#: (loss, backend) -> number of calls
CALLS: Counter = Counter()
#: bad-input or benign class -> Counter of outcomes ("ok" or the exception type)
CLASSES: dict = defaultdict(Counter)
#: loss -> seconds its fuzz test took
SECONDS: dict = {}
#: (catalogue class, backend) -> exception raised
CATALOGUE_CHECKS: dict = {}
#: free-form lines from other fuzzers (the atheris target)
NOTES: list = []


def record(loss: str, backend: str, classes, outcome: str) -> None:
    CALLS[(loss, backend)] += 1
    for name in classes or ("valid input",):
        CLASSES[name][outcome] += 1


def record_class(name: str, backend: str, outcome: str) -> None:
    """A catalogue entry (tests/fuzz/bad_inputs.py) checked on one backend."""
    CATALOGUE_CHECKS[(name, backend)] = outcome


def record_time(loss: str, seconds: float) -> None:
    SECONDS[loss] = SECONDS.get(loss, 0.0) + seconds


def lines() -> list[str]:
    if not CALLS and not NOTES and not CATALOGUE_CHECKS:
        return []
    out = []
    if CATALOGUE_CHECKS:
        classes = {name for name, _ in CATALOGUE_CHECKS}
        backends = sorted({b for _, b in CATALOGUE_CHECKS})
        out.append(f"bad-input catalogue: {len(classes)} classes checked on {', '.join(backends)} "
                   f"({len(CATALOGUE_CHECKS)} checks; table in docs/errors.md)")
    if CALLS:
        backends = sorted({b for _, b in CALLS})
        losses = list(dict.fromkeys(loss for loss, _ in CALLS))
        out.append("calls per loss and backend (each checked against the numpy reference):")
        out.append(f"  {'loss':<26}" + "".join(f"{b:>8}" for b in backends) + f"{'seconds':>9}")
        for loss in losses:
            out.append(f"  {loss:<26}" + "".join(f"{CALLS.get((loss, b), 0):>8}" for b in backends)
                       + f"{SECONDS.get(loss, 0.0):>9.1f}")
        out.append(f"  total {sum(CALLS.values())} calls, {len(losses)} losses, "
                   f"{sum(SECONDS.values()):.0f} s")
        out.append(f"input classes covered: {len(CLASSES)} (outcome counts over all backends)")
        for name in sorted(CLASSES):
            outcomes = ", ".join(f"{k} {v}" for k, v in sorted(CLASSES[name].items()))
            out.append(f"  {name:<56} {outcomes}")
    out.extend(NOTES)
    return out


def pytest_terminal_summary(terminalreporter):
    text = lines()
    if text:
        terminalreporter.section("numbaloss fuzz figures")
        for line in text:
            terminalreporter.write_line(line)
