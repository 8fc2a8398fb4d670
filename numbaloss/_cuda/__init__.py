"""The ``cuda`` backend (numba-cuda); imported only when that backend is asked for."""
