"""Builds the TaLK CPU kernel (talk/csrc) as tdx.talk._C; everything else is in pyproject.toml.

The kernel is compiled against the torch it will run with, so it is built only when torch
is importable at build time: `make install` installs torch first and builds with
--no-build-isolation. A plain `pip install .` (build isolation, no torch in the build
environment) installs tdx without the kernel, says so, and tdx.talk.ops falls back to plain
PyTorch (same numbers, slower).

Compiled for the compiler's default target (portable across machines of one architecture);
`TDX_MARCH=native pip install ...` builds for the build machine's own instructions instead
(results/bench/talk_op_march.md measures the difference).
"""

import os
import sys

from setuptools import setup

try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError:
    print("tdx: torch is not importable in the build environment, so the TaLK kernel is "
          "not built (tdx.talk.ops falls back to plain PyTorch). To build it: install "
          "torch==2.13.0 first, then `pip install --no-build-isolation .`", file=sys.stderr)
    setup()
else:
    march = os.environ.get("TDX_MARCH", "")
    flags = ["-O3", "-fopenmp", *([f"-march={march}"] if march else [])]
    setup(
        ext_modules=[CppExtension("tdx.talk._C", ["talk/csrc/talk_op.cpp"],
                                  extra_compile_args=flags, extra_link_args=["-fopenmp"])],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=False)},
    )
