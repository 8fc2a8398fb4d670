import pathlib
import sys

# the shared case tables (tests/cases.py) import as a plain module
sys.path.insert(0, str(pathlib.Path(__file__).parent))
