# cython: language_level=3, cdivision=True, boundscheck=False, wraparound=False
"""What every loop module of ``_cext/`` shares: the chunk sizes (the Numba loops'
numbers) and the parallel threshold, the status bits, the element types the loops
read, whether OpenMP was compiled in, and which instruction sets the CPU has."""

from libc.stdint cimport int64_t, uint8_t

#: elements per chunk (one prange iteration; partial sums are added in chunk order)
cdef enum:
    CHUNK = 16384
    ROW_CHUNK_ELEMENTS = 16384
    #: below this many elements the serial loop runs: two threads cost more than they give
    PARALLEL_THRESHOLD = 131072

#: bits of the status flags the loops return (numbaloss._validation)
cdef enum:
    BAD_TARGET = 1
    BAD_PREDICTION = 2
    BAD_LABEL = 4

#: element types of elementwise targets read as they are: float32/float64 (of the
#: predictions' dtype), and bool / uint8 0/1 targets (a bool array is passed as its
#: uint8 view).  numbaloss._cython_backend converts other targets exactly.
ctypedef fused target_t:
    float
    double
    uint8_t

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define NUMBALOSS_HAVE_OPENMP 1
    static inline int numbaloss_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    #define NUMBALOSS_HAVE_OPENMP 0
    static inline int numbaloss_omp_max_threads(void) { return 1; }
    #endif
    """
    const int NUMBALOSS_HAVE_OPENMP
    int numbaloss_omp_max_threads() noexcept nogil

cdef extern from *:
    """
    /* whether this CPU runs the copies of setup.py (its ISA_VARIANTS flags) */
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    static inline int numbaloss_cpu_supports_avx2(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx") && __builtin_cpu_supports("avx2")
            && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi")
            && __builtin_cpu_supports("bmi2");
    }
    static inline int numbaloss_cpu_supports_avx512(void) {
        return numbaloss_cpu_supports_avx2()
            && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd")
            && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")
            && __builtin_cpu_supports("avx512vl");
    }
    #else
    static inline int numbaloss_cpu_supports_avx2(void) { return 0; }
    static inline int numbaloss_cpu_supports_avx512(void) { return 0; }
    #endif
    """
    int numbaloss_cpu_supports_avx2() noexcept nogil
    int numbaloss_cpu_supports_avx512() noexcept nogil
