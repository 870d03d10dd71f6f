"""slicekit build script.

Build switches (environment variables):

| variable                  | effect                                                                   |
| ------------------------- | ------------------------------------------------------------------------ |
| SLICEKIT_SKIP_CUDA=1      | never build the CUDA extension (pure-Python install)                     |
| SLICEKIT_FORCE_CUDA=1     | build it, and fail loudly if it cannot be built                          |
| TORCH_CUDA_ARCH_LIST      | GPU targets, e.g. "8.0;9.0" (default: "8.0;9.0", sm_90a added for 9.0)   |
| MAX_JOBS                  | parallel compile jobs (ninja)                                            |
| NVCC_THREADS              | nvcc --threads (default 4)                                               |

Without a CUDA toolkit or a CUDA build of torch the package installs as pure Python and the
Triton / PyTorch backends are used; a missing nvcc is a warning, never an error.
Install without build isolation so the extension compiles against the torch you run:
``pip install --no-build-isolation -e .``
"""
from __future__ import annotations

import os
import warnings

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _cuda_library_paths(cuda_home: str):
    """Where cuBLAS (and the cuSPARSE/cuSOLVER headers ATen/cuda/CUDAContext.h includes) live.

    A toolkit installed from pip's nvidia-* wheels, or a minimal one, may ship nvcc without them;
    the CUDA builds of torch depend on those wheels, so their include/ and lib/ folders are used
    when the toolkit lacks cublas_v2.h. Returns (include_dirs, library_dirs, extra_link_args).
    """
    toolkit_inc = os.path.join(cuda_home, "include")
    lib_dirs = [os.path.join(cuda_home, d) for d in ("lib64", "lib") if os.path.isdir(os.path.join(cuda_home, d))]
    inc_dirs: list[str] = []
    if not os.path.exists(os.path.join(toolkit_inc, "cublas_v2.h")):
        try:
            import nvidia  # namespace package of the nvidia-* wheels

            roots = list(nvidia.__path__)
        except Exception:
            roots = []
        for root in roots:
            for sub in sorted(os.listdir(root)):
                inc = os.path.join(root, sub, "include")
                if os.path.isdir(inc) and any(
                    os.path.exists(os.path.join(inc, h)) for h in ("cublas_v2.h", "cusparse.h", "cusolverDn.h")
                ):
                    inc_dirs.append(inc)
                    if os.path.isdir(os.path.join(root, sub, "lib")):
                        lib_dirs.append(os.path.join(root, sub, "lib"))
        if not inc_dirs:
            warnings.warn(f"slicekit: no cublas_v2.h under {toolkit_inc} nor in pip's nvidia-* packages; the build will fail")
    # Link cuBLAS by name when a linkable file exists; otherwise the symbols resolve at import from
    # the libcublas that libtorch_cuda already loaded (same soname).
    link_args: list[str] = []
    for d in lib_dirs:
        names = sorted(f for f in os.listdir(d) if f.startswith("libcublas.so"))
        if "libcublas.so" in names:
            link_args = ["-lcublas"]
            break
        if names:
            link_args = [f"-l:{names[0]}"]
            break
    return inc_dirs, lib_dirs, link_args


def _cuda_extensions():
    if _flag("SLICEKIT_SKIP_CUDA") or _flag("SLICEKIT_SKIP_CUDA_BUILD"):
        return [], {}
    force = _flag("SLICEKIT_FORCE_CUDA") or _flag("SLICEKIT_FORCE_BUILD")
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except Exception as exc:  # torch missing at build time: pure-Python install
        if force:
            raise RuntimeError(f"SLICEKIT_FORCE_CUDA=1 but torch is not importable: {exc}") from exc
        warnings.warn(f"slicekit: torch not importable at build time ({exc}); building without the CUDA extension")
        return [], {}
    if torch.version.cuda is None or CUDA_HOME is None:
        msg = (
            f"slicekit: no CUDA build of torch (torch.version.cuda={torch.version.cuda}) or no CUDA toolkit "
            f"(CUDA_HOME={CUDA_HOME}); building without the CUDA extension"
        )
        if force:
            raise RuntimeError(msg)
        warnings.warn(msg)
        return [], {}
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    gencode = []
    for arch in arch_list.replace(",", ";").replace(" ", ";").split(";"):
        arch = arch.strip()
        if not arch:
            continue
        ptx = arch.endswith("+PTX")
        num = arch.replace("+PTX", "").replace(".", "")
        if num == "90":
            num = "90a"  # wgmma needs the arch-specific target; sm_90a runs on every H100/H200
        gencode += ["-gencode", f"arch=compute_{num},code=sm_{num}"]
        if ptx:
            gencode += ["-gencode", f"arch=compute_{num},code=compute_{num}"]
    # The arch list is ours: keep torch from appending its own -gencode flags for the build GPU.
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    # No -std flag: torch's BuildExtension adds the standard its own headers need (c++17 or c++20,
    # depending on the torch version), and nvcc refuses two -std flags.
    nvcc_flags = [
        "-O3",
        "--use_fast_math",
        "--expt-relaxed-constexpr",
        "-lineinfo",
        f"--threads={os.environ.get('NVCC_THREADS', '4')}",
        "-U__CUDA_NO_HALF_OPERATORS__",
        "-U__CUDA_NO_HALF_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT16_OPERATORS__",
        "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    ] + gencode
    sources = sorted(
        os.path.join("csrc", f) for f in os.listdir(os.path.join(ROOT, "csrc")) if f.endswith((".cpp", ".cu"))
    )
    if not sources:
        return [], {}
    include_dirs, library_dirs, link_args = _cuda_library_paths(CUDA_HOME)
    ext = CUDAExtension(
        name="slicekit._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")] + include_dirs,
        library_dirs=library_dirs,
        extra_compile_args={"cxx": ["-O3"], "nvcc": nvcc_flags},
        extra_link_args=link_args,
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _cuda_extensions()

setup(
    name="slicekit",
    version="0.1.0",
    description="SliceGPT for Hugging Face decoder LLMs, with Triton and CUDA kernels",
    long_description=open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    if os.path.exists(os.path.join(ROOT, "README.md"))
    else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["slicekit", "slicekit.ops", "slicekit.adapters", "slicekit.kernels"],
    # The Triton kernels live in the top-level kernels/ folder but import as slicekit.kernels:
    # a top-level `kernels` package would clash with Hugging Face's `kernels`.
    package_dir={"slicekit": "slicekit", "slicekit.kernels": "kernels"},
    install_requires=[
        "torch>=2.4",
        "transformers>=5.0",
        "safetensors>=0.4",
        "numpy>=1.24",
        "tqdm>=4.60",
    ],
    extras_require={
        "triton": ["triton>=3.0"],
        "gguf": ["gguf>=0.10", "accelerate>=0.30"],
        "bench": ["pytest-benchmark>=4", "matplotlib>=3.6"],
        "test": ["pytest>=7", "pytest-benchmark>=4", "triton>=3.0", "gguf>=0.10", "accelerate>=0.30"],
    },
    entry_points={"console_scripts": ["slicekit=slicekit.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
