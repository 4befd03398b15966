"""ghostkernels: fused kernels for GhostNet's Ghost module, as PyTorch custom ops with autograd.

The package has three layers that import one way only (tests/test_structure.py checks it): ``ops`` (a wrapper for
every op of the ``ghostkernels`` namespace, the library's build and registration), ``nn`` (fused modules with the
state_dicts of the modules they stand for, and the recognizers), ``patch`` (fuse / freeze: changing a model in
place); beside them ``models`` (reference GhostNet), ``triton`` (the Triton backend of ops), ``export`` (AOTInductor,
ONNX) and ``bench`` (the benchmark harness).

``import ghostkernels`` loads the op library (building it on first use; one line on stderr says so) and registers
the Triton op where triton is installed, so every ``torch.ops.ghostkernels`` op resolves right after the import.
With GHOSTKERNELS_DEFER_LOAD=1 in the environment nothing is loaded at import; the library is loaded on first use
or by ``ghostkernels.load_library()``.
"""

from . import models, ops
from .models import GhostModule
from .nn import FusedConvBnAct, FusedGatedGhostModule, FusedGhostBottleneck, FusedGhostConv, FusedGhostModule
from .ops import ghost_module, load_library
from .patch import GhostFuseWarning, NotFusableError, freeze, fuse, unfreeze

__version__ = "0.1.0"

__all__ = ["FusedConvBnAct", "FusedGatedGhostModule", "FusedGhostBottleneck", "FusedGhostConv", "FusedGhostModule",
           "GhostFuseWarning", "GhostModule", "NotFusableError", "freeze", "fuse", "ghost_module", "load_library",
           "models", "ops", "unfreeze", "__version__"]

if not ops.defer_load_requested():
    ops.load_at_import()
