"""The nn layer: fused modules that stand in for a model's layers, with the same parameters and state_dict.

Layer 2 of the package (ops -> nn -> patch): these modules import ghostkernels.ops (and ghostkernels.models), never
ghostkernels.patch. Its modules: ``ghost_module`` (FusedGhostModule, FusedGatedGhostModule, FusedGhostConv),
``bottleneck`` (FusedGhostBottleneck), ``conv_bn_act`` (FusedConvBnAct and the fused stem's modules), ``head``
(FusedConvHead, FusedClassifier), ``folding`` (differentiable BatchNorm folding and the fold cache), ``gate`` (the
one rule for when a fused module runs a CPU inference op), ``activations``, and ``recognize`` (every recognizer, the probe check
and the NotFusableError family: the modules' from_module needs them, ghostkernels.patch uses them to walk models).
"""

from .bottleneck import FusedGhostBottleneck
from .conv_bn_act import BatchNormAfterFusedStem, FusedConvBnAct, FusedStemConv, ReLUAfterFusedStem
from .folding import FoldCache, fold_conv_bn
from .ghost_module import FusedGatedGhostModule, FusedGhostBase, FusedGhostConv, FusedGhostModule
from .head import FusedClassifier, FusedConvHead
from .recognize import NotFusableError, StemNotFusable

__all__ = ["BatchNormAfterFusedStem", "FoldCache", "FusedClassifier", "FusedConvBnAct", "FusedConvHead",
           "FusedGatedGhostModule", "FusedGhostBase", "FusedGhostBottleneck", "FusedGhostConv", "FusedGhostModule",
           "FusedStemConv", "NotFusableError", "ReLUAfterFusedStem", "StemNotFusable", "fold_conv_bn"]
