"""The patch layer: changing a user's model in place so that fused modules stand in for its layers.

Layer 3 of the package (ops -> nn -> patch). Its modules: ``fusing`` (fuse(): walk a model, swap what
ghostkernels.nn.recognize accepts, one GhostFuseWarning for the rest or, with strict=True, one NotFusableError),
``stem`` (the fused stem, installed in its parent), ``frozen`` (freeze / unfreeze: frozen fold caches and a fused
GhostNet's whole forward as one ghostkernels::chain call). The error family (NotFusableError and its subclasses
StemNotFusable and ChainNotBuildable) is re-exported here. (The modules are not named after the functions fuse and
freeze so that ``ghostkernels.patch.fuse`` is the function.)
"""

from ..nn.recognize import NotFusableError, StemNotFusable
from .frozen import ChainNotBuildable, freeze, unfreeze
from .fusing import GhostFuseWarning, fuse, fuse_head
from .stem import fuse_stem

__all__ = ["ChainNotBuildable", "GhostFuseWarning", "NotFusableError", "StemNotFusable", "freeze", "fuse",
           "fuse_head", "fuse_stem", "unfreeze"]
