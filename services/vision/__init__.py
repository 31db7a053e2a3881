"""The detection engine: backbones, PatchCore and SPADE detectors, calibration, defects, metrics.

Modules are imported directly (``from services.vision.patchcore import ...``); this package
re-exports nothing.
"""

import sys

# linewatch never compiles kernels (no torch.compile). Keep OpenAI Triton, the GPU kernel compiler that
# torch's CUDA wheels install and import together with torchvision, from loading: it would cost every
# linewatch process about 100 MB of resident memory for nothing. An application that has imported
# triton itself keeps it.
sys.modules.setdefault("triton", None)  # type: ignore[arg-type]
