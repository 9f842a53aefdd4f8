"""Make `import streaming` work on a CPU-only torch.

`streaming/__init__` imports `streaming.vision`, which imports torchvision. The only torchvision
on PyPI that pins our torch (0.28.0) is a CUDA build; with the CPU torch its import fails with
`operator torchvision::nms does not exist`. Declaring the schemas of the two ops it registers
lets the import succeed; torchvision's C++ ops stay unavailable, which nothing here uses.
"""

import torch

_LIB = None


def ensure_streaming_importable() -> None:
    global _LIB
    if _LIB is not None or torch.version.cuda is not None:
        return
    try:
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
        return  # a working torchvision build already registered it
    except RuntimeError:
        pass
    _LIB = torch.library.Library("torchvision", "DEF")
    _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
