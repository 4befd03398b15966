"""Packaging for ghostkernels.

`pip install .` and `pip install -e .` compile nothing: the C++/CUDA sources in csrc/ ship inside the package
(as ghostkernels/csrc) and are built with ninja on first use (ghostkernels/ops/build.py).

torch is deliberately not an install requirement: pip would otherwise be free to replace an installed torch or to
fetch a multi-GB CUDA build on a machine that has none. Install torch first (see README).

Ahead-of-time build: `GHOSTKERNELS_BUILD_AOT=1 pip install --no-build-isolation .` compiles csrc/ into
ghostkernels/_C*.so at install time with torch's BuildExtension (the installed torch is used, hence
--no-build-isolation); the package then loads that library instead of building one.
"""

import glob
import os

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def aot_ext_modules():
    if os.environ.get("GHOSTKERNELS_BUILD_AOT", "0") != "1":
        return {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    srcs = sorted(glob.glob("csrc/*.cpp"))  # as ghostkernels/ops/build.py: schema, checks, device-generic ops, stub
    srcs += sorted(glob.glob("csrc/cpu/*.cpp"))
    with_cuda = torch.version.cuda is not None and os.environ.get("GHOSTKERNELS_NO_CUDA", "0") != "1"
    kwargs = dict(name="ghostkernels._C", include_dirs=[os.path.join(HERE, "csrc")],
                  extra_compile_args={"cxx": ["-O3", "-fopenmp"], "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]})
    if with_cuda:
        srcs += sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu"))
        kwargs["extra_compile_args"]["cxx"].append("-DGHOSTKERNELS_WITH_CUDA")
        ext = CUDAExtension(sources=srcs, **kwargs)
    else:
        ext = CppExtension(sources=srcs, **kwargs)
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension}}


setup(
    name="ghostkernels",
    version="0.1.0",
    description="Fused C++/CUDA and Triton kernels for GhostNet's Ghost module, as PyTorch custom ops",
    long_description=open(os.path.join(HERE, "README.md")).read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["ghostkernels", "ghostkernels.bench", "ghostkernels.triton", "ghostkernels.csrc"],
    package_dir={"ghostkernels.csrc": "csrc"},
    package_data={"ghostkernels.csrc": ["*.cpp", "*.h", "cpu/*.cpp", "cpu/*.h", "cuda/*.cpp", "cuda/*.cu",
                                        "cuda/*.cuh", "cuda/*.h"]},
    install_requires=["ninja", "numpy"],
    extras_require={
        # triton: 3.6 is what torch 2.11's CUDA builds ship; on CPU the interpreter needs >= 3.7.1 with numpy 2.4.
        "test": ["pytest", "pytest-benchmark", "pytest-xdist>=3.8", "expecttest", "matplotlib", "onnx", "onnxscript",
                 "onnxruntime",
                 "triton>=3.6,<3.9; platform_system == 'Linux' and platform_machine == 'x86_64'"],
        "bench": ["matplotlib", "pytest-benchmark"],
        "onnx": ["onnx", "onnxscript", "onnxruntime"],
        # The benchmark's OpenVINO peer (ghostkernels/bench/openvino_peer.py); never required.
        "openvino": ["openvino", "onnx", "onnxscript"],
    },
    entry_points={"console_scripts": ["ghostkernels-bench=ghostkernels.bench.__main__:main"]},
    **aot_ext_modules(),
)
