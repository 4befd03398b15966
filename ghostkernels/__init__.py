"""ghostkernels: fused kernels for GhostNet's Ghost module, as PyTorch custom ops with autograd."""

from . import models, ops
from .bottleneck import FusedGhostBottleneck
from .conv_bn_act import FusedConvBnAct
from .fuse import fuse
from .models import GhostModule
from .frozen import freeze, unfreeze
from .modules import FusedGhostConv, FusedGhostModule
from .ops import ghost_module, load_library

__version__ = "0.1.0"

__all__ = ["FusedConvBnAct", "FusedGhostBottleneck", "FusedGhostConv", "FusedGhostModule", "GhostModule", "freeze", "fuse", "ghost_module", "load_library",
           "models", "ops", "unfreeze", "__version__"]
