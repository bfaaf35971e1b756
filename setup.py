"""Builds the Cython engine. LOADFORGE_DEBUG=1 turns on line tracing and bounds checks."""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("LOADFORGE_DEBUG") == "1"

directives = {"language_level": 3, "embedsignature": True}
macros = []
cflags = ["-O2"]
if DEBUG:
    directives.update({"linetrace": True, "boundscheck": True, "wraparound": True})
    macros.append(("CYTHON_TRACE_NOGIL", "1"))
    cflags = ["-O0", "-g"]

setup(
    ext_modules=cythonize(
        [
            Extension(
                "loadforge._core",
                ["loadforge/_core.pyx"],
                define_macros=macros,
                # The system's OpenSSL 3 (libssl-dev), the libssl.so.3 Python's ssl loads too.
                libraries=["ssl", "crypto"],
                extra_compile_args=cflags,
            )
        ],
        compiler_directives=directives,
    ),
)
