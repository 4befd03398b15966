"""ghostkernels: fused kernels for GhostNet's Ghost module, as PyTorch custom ops with autograd."""

from . import ops
from .ops import ghost_module, load_library

__version__ = "0.1.0"

__all__ = ["ops", "ghost_module", "load_library", "__version__"]
