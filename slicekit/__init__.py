"""slicekit: SliceGPT for Hugging Face decoder LLMs, with Triton and CUDA kernels.

    sliced, report = slicekit.slice_model(model, calibration_ids, sparsity=0.25)
    slicekit.save_sliced(sliced, "out/")
    model = slicekit.load_sliced("out/")
"""
__version__ = "0.1.0"

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
