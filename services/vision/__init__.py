"""The detection engine: backbones, PatchCore and SPADE detectors, calibration, defects, metrics.

Modules are imported directly (``from services.vision.patchcore import ...``); this package
re-exports nothing.
"""
