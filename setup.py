"""Builds the TaLK CPU kernel (talk/csrc) as tdx.talk._C; everything else is in pyproject.toml.

Needs torch at build time: `make install` installs it first and builds with
--no-build-isolation. If the kernel is missing, tdx.talk.ops falls back to plain PyTorch.
"""

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

setup(
    ext_modules=[CppExtension(
        "tdx.talk._C", ["talk/csrc/talk_op.cpp"],
        extra_compile_args=["-O3", "-march=native", "-fopenmp"], extra_link_args=["-fopenmp"])],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=False)},
)
