"""The compiled parts of rtml; everything else is declared in pyproject.toml.

The features pipeline's hot path is C (gcc and the Python headers are on every machine
that installs rtml: these hosts, and the Dockerfile's build stage).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("engine.events._batch_check", ["engine/events/_batch_check.c"], extra_compile_args=["-O2"]),
        Extension("engine.features._kernels", ["engine/features/_kernels.c"], extra_compile_args=["-O2"]),
        Extension("engine.runtime._routing", ["engine/runtime/_routing.c"], extra_compile_args=["-O2"]),
        Extension("engine.features._resp", ["engine/features/_resp.c"], extra_compile_args=["-O2"]),
    ]
)
