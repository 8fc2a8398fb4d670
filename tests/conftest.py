import pathlib
import sys

# the shared case tables (tests/cases.py) import as a plain module
sys.path.insert(0, str(pathlib.Path(__file__).parent))

# the fuzz figures (tests/test_fuzz.py, tests/fuzz/) are printed at the end of the run
from fuzz.report import pytest_terminal_summary  # noqa: E402,F401
