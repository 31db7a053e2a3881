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

import cv2  # noqa: E402  (after the triton guard above)

# torch owns the cores. OpenCV's own worker threads (used by its resize and filters) otherwise compete
# with torch's OpenMP team: batch-8 inference on magnetic tile (2 threads) then ran at about 49
# images/s in 2 of 5 fresh processes against 66-71 in the others; with OpenCV on one thread none of
# 5 fell into that slow mode. Frames are resized one at a time here, so it loses nothing.
cv2.setNumThreads(1)
