"""slicekit: SliceGPT for Hugging Face decoder LLMs, with Triton and CUDA kernels.

    sliced, report = slicekit.slice_model(model, calibration_ids, sparsity=0.25)
    slicekit.save_sliced(sliced, "out/")
    model = slicekit.load_sliced("out/")
"""
__version__ = "0.1.0"


def _map_kernels_from_checkout() -> None:
    """Make ``slicekit.kernels`` importable from a source checkout that was never installed.

    setup.py maps the top-level ``kernels/`` folder to ``slicekit.kernels``; a plain checkout on
    sys.path lacks that mapping, so register the folder under that name ourselves.
    """
    import importlib.util
    import os
    import sys

    if "slicekit.kernels" in sys.modules:
        return
    try:
        if importlib.util.find_spec("slicekit.kernels") is not None:
            return
    except (ImportError, ValueError):
        pass
    init = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels", "__init__.py")
    if os.path.isfile(init):
        spec = importlib.util.spec_from_file_location(
            "slicekit.kernels", init, submodule_search_locations=[os.path.dirname(init)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["slicekit.kernels"] = module
        spec.loader.exec_module(module)


_map_kernels_from_checkout()

from .adapters import SUPPORTED_MODEL_TYPES, UnsupportedModelError, get_adapter
from .calibration import CalibrationError
from .io import is_sliced, is_sliced_dir, load_sliced, save_sliced
from .ops import available_backends
from .report import SliceReport, count_parameters
from .slicing import NonFiniteActivationsError, slice_model, sliced_width


def perplexity(*args, **kwargs):
    """exp(mean cross-entropy) over non-overlapping windows; see ``slicekit.eval.perplexity``."""
    from .eval import perplexity as _ppl

    return _ppl(*args, **kwargs)


__all__ = [
    "slice_model", "save_sliced", "load_sliced", "perplexity", "count_parameters", "is_sliced", "is_sliced_dir",
    "SliceReport", "sliced_width", "get_adapter", "available_backends", "SUPPORTED_MODEL_TYPES",
    "UnsupportedModelError", "CalibrationError", "NonFiniteActivationsError", "__version__",
]
