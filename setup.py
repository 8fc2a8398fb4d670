"""Build script: the package is declared in pyproject.toml; this file adds the
Cython extensions compiled from ``_cext/`` (the fallback backend for machines
without Numba): every ``_cext/<module>.pyx`` becomes ``numbaloss._cext.<module>``.

OpenMP: the build tries to compile and link a small OpenMP program with the
compiler setuptools chose (``-fopenmp`` for gcc/clang, ``/openmp`` for MSVC,
``-Xpreprocessor -fopenmp -lomp`` for Apple clang with libomp).  When none works
the extensions are built serial (the ``prange`` loops run on one thread) and the
build says so.  ``NUMBALOSS_OPENMP=0`` builds serial on purpose; ``NUMBALOSS_OPENMP=1``
makes a missing OpenMP an error.

Instruction sets: the extensions are compiled for the baseline of the platform
(SSE2 on x86-64), so that a wheel runs everywhere.  The loops of the modules in
``ISA_MODULES`` are vectorised, and SSE2 (two float64 lanes, no 64-bit shifts or
blends) is far too little to keep up with the Numba backend, which compiles for
the CPU it runs on (measured on one thread, AVX-512 CPU: bce from logits 3.9x the
time of Numba with SSE2, 1.4x with AVX2, 1.0x with AVX-512).  On x86-64 with
gcc/clang those modules are therefore compiled twice more, for AVX2 + FMA (CPUs
from 2013 on) and for AVX-512 (F/CD/BW/DQ/VL), as
``numbaloss._cext.<module>_avx2`` / ``_avx512``, and
``numbaloss._cython_backend`` loads the widest copy the CPU runs.  There the
baseline copy is a fallback for old CPUs and is compiled without the inlining
flags below (half the build time).  The copies agree to rounding (the fast exp/log
use fused multiply-adds where the instruction set has them, as the Numba version
does; the summation order is fixed).  ``NUMBALOSS_ISA_VARIANTS=0`` builds the
baseline module only (then vectorised as far as SSE2 goes).
"""

from __future__ import annotations

import os
import pathlib
import platform
import shutil
import sys
import tempfile

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = pathlib.Path(__file__).parent
CEXT = HERE / "_cext"
#: modules of _cext/ that also get a copy for a wider instruction set
ISA_MODULES = ("elementwise", "pairwise", "softmax")
#: suffix of the copy -> compile flags to try in order (gcc/clang)
ISA_VARIANTS = {
    # exactly the features the modules check at run time (cpu_supports(), _common.pxd)
    "avx2": (["-mavx", "-mavx2", "-mfma", "-mbmi", "-mbmi2"],),
    "avx512": (["-mavx", "-mavx2", "-mfma", "-mbmi", "-mbmi2", "-mavx512f", "-mavx512cd", "-mavx512bw",
                "-mavx512dq", "-mavx512vl"],),
}
# the Cython directives of the .pyx files apply to the copies too (an include does
# not carry them): keep in step with the first line of _cext/*.pyx
_DIRECTIVES = "# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False"

_OPENMP_PROBE = r"""
#include <omp.h>
#include <stdio.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    printf("%d\n", n > 0 && omp_get_max_threads() > 0);
    return 0;
}
"""

_PLAIN_PROBE = "int main(void) { return 0; }\n"


def _try_build(compiler, source: str, compile_args: list, link_args: list) -> bool:
    """Compile and link ``source`` with these flags; True if both succeed (quietly)."""
    tmp = tempfile.mkdtemp(prefix="numbaloss-probe-")
    cwd = os.getcwd()
    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(1), os.dup(2)
    try:
        os.chdir(tmp)
        pathlib.Path("probe.c").write_text(source)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        objects = compiler.compile(["probe.c"], output_dir=tmp, extra_postargs=compile_args)
        compiler.link_executable(objects, "probe", output_dir=tmp, extra_postargs=link_args)
        return True
    except Exception:  # CompileError, LinkError, or a compiler that is missing
        return False
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        os.close(devnull)
        os.chdir(cwd)
        shutil.rmtree(tmp, ignore_errors=True)


def openmp_flags(compiler) -> tuple[list, list] | None:
    """(compile args, link args) that build an OpenMP program here, or None."""
    if compiler.compiler_type == "msvc":
        candidates = [(["/openmp"], [])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]
        if sys.platform == "darwin":  # Apple clang with Homebrew's libomp
            candidates.append((["-Xpreprocessor", "-fopenmp"], ["-lomp"]))
    for compile_args, link_args in candidates:
        if _try_build(compiler, _OPENMP_PROBE, compile_args, link_args):
            return compile_args, link_args
    return None


def accepted_flags(compiler, flags: list) -> list:
    """The flags of ``flags`` this compiler accepts (each tried alone)."""
    if compiler.compiler_type == "msvc":
        return []
    return [f for f in flags if _try_build(compiler, _PLAIN_PROBE, [f], [])]


# Floating-point flags (gcc/clang; each is kept only if the compiler accepts it):
# -ffp-contract=off: no fused multiply-add contraction, so that the results do not
#   depend on the target CPU (and match the Numba loops where LLVM does not fuse);
# -fno-trapping-math: floating-point operations do not trap (nothing here enables
#   traps, and LLVM assumes the same for the Numba loops), so the compiler may
#   evaluate both sides of a select: without it GCC keeps every data-dependent
#   ``a if c else b`` as a branch and vectorises none of the loss loops.  It changes
#   no value, only which IEEE status flags may be raised;
# -fno-math-errno: math functions need not set errno (nothing reads it);
# -g0: Python's CFLAGS ask for debug information, which doubles the compile time
#   and the size of the extensions;
# -Wno-unused-function: Cython writes every combination of a fused function's
#   types, and the dispatchers call only some of them.
_EXTRA_FLAGS = ["-ffp-contract=off", "-fno-trapping-math", "-fno-math-errno", "-g0", "-Wno-unused-function"]
# For the vectorised builds (the copies of ISA_MODULES, or the module itself where
# it has no copies):
# --param=...: GCC's inliner stops at a budget per file well before the point
#   functions (exp, log1p, ...) are inlined into every loop specialisation, and a
#   loop with a call in it is not vectorised; these raise the budget (clang inlines
#   them without being asked and rejects these flags, so they are dropped there);
# -O2 -ftree-vectorize -fvect-cost-model=dynamic instead of Python's -O3: the same
#   speed of the loss loops here (measured), in half the compile time of -O3.
_INLINE_FLAGS = ["-O2", "-ftree-vectorize", "-fvect-cost-model=dynamic",
                 "--param=inline-unit-growth=1000", "--param=large-function-growth=1000",
                 "--param=max-inline-insns-single=1000"]


class BuildExt(build_ext):
    """build_ext that adds the OpenMP flags (when the compiler has OpenMP) and the
    floating-point flags above to every extension, the instruction-set flags to the
    copies of ISA_MODULES (dropping a copy the compiler cannot build), and compiles
    the extensions in parallel."""

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1

    def build_extensions(self):
        setting = os.environ.get("NUMBALOSS_OPENMP", "").strip()
        flags = None
        if setting != "0":
            flags = openmp_flags(self.compiler)
            if flags is None and setting == "1":
                raise RuntimeError("NUMBALOSS_OPENMP=1 but the compiler cannot build an OpenMP program")
        if flags is None:
            print("numbaloss: building the Cython extensions without OpenMP (serial loops)"
                  + (" as NUMBALOSS_OPENMP=0 asks" if setting == "0" else
                     ": the compiler could not build an OpenMP program"))
            flags = ([], [])
        else:
            print(f"numbaloss: building the Cython extensions with OpenMP ({' '.join(flags[0])})")
        extra = accepted_flags(self.compiler, _EXTRA_FLAGS)
        inline = accepted_flags(self.compiler, _INLINE_FLAGS)
        isa_flags = {}
        for suffix, candidates in ISA_VARIANTS.items():
            for candidate in candidates:
                if self.compiler.compiler_type != "msvc" and _try_build(
                        self.compiler, _PLAIN_PROBE, candidate, []):
                    isa_flags[suffix] = candidate
                    break
        kept = []
        for ext in self.extensions:
            suffix = getattr(ext, "numbaloss_isa", None)
            if suffix is not None and suffix not in isa_flags:
                print(f"numbaloss: skipping {ext.name}: the compiler has no flags for {suffix}")
                continue
            kept.append(ext)
        with_copies = {ext.numbaloss_module for ext in kept if getattr(ext, "numbaloss_isa", None)}
        for ext in kept:
            suffix = getattr(ext, "numbaloss_isa", None)
            args = list(ext.extra_compile_args or []) + extra + flags[0]
            if suffix is not None:
                args += isa_flags[suffix] + inline
            elif ext.name not in with_copies:
                args += inline
            ext.extra_compile_args = args
            ext.extra_link_args = list(ext.extra_link_args or []) + flags[1]
        self.extensions[:] = kept
        super().build_extensions()


def cython_extensions():
    sources = sorted(str(p.relative_to(HERE)) for p in CEXT.glob("*.pyx"))
    if not sources:
        return []
    import numpy
    from Cython.Build import cythonize
    from setuptools import Extension

    def extension(name, src):
        return Extension(
            f"numbaloss._cext.{name}",
            [src],
            include_dirs=[numpy.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )

    extensions = [extension(pathlib.Path(src).stem, src) for src in sources]
    variants = []
    if _wants_isa_variants():
        stubs = HERE / "build" / "cext-isa"
        stubs.mkdir(parents=True, exist_ok=True)
        for module in ISA_MODULES:
            if not (CEXT / f"{module}.pyx").exists():
                continue
            for suffix in ISA_VARIANTS:
                stub = stubs / f"{module}_{suffix}.pyx"
                text = f'{_DIRECTIVES}\n# generated by setup.py: {module}.pyx for {suffix}\ninclude "{module}.pyx"\n'
                if not stub.exists() or stub.read_text() != text:
                    stub.write_text(text)
                variants.append((suffix, extension(f"{module}_{suffix}", str(stub.relative_to(HERE)))))
    # the shared .pxd files (and the included .pyx) of _cext/ are found by their plain names
    compiled = cythonize(extensions + [ext for _, ext in variants], language_level=3,
                         include_path=[str(CEXT)])
    for ext in compiled:
        for suffix, variant in variants:
            if ext.name == variant.name:
                ext.numbaloss_isa = suffix
                ext.numbaloss_module = ext.name[: -len(suffix) - 1]
    return compiled


def _wants_isa_variants() -> bool:
    if os.environ.get("NUMBALOSS_ISA_VARIANTS", "").strip() == "0":
        return False
    return platform.machine().lower() in ("x86_64", "amd64")


setup(ext_modules=cython_extensions(), cmdclass={"build_ext": BuildExt})
