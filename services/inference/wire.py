"""A scored frame as bytes: how Triton's detector model hands a prediction back to ``triton://``.

Triton's Python backend can only pass numeric tensors safely here (see ``triton_server.py``), so
each frame's prediction (verdict, scores, defects, embedding; never its anomaly map, the heat map
travels as a uint8 tensor beside it) goes as UTF-8 JSON in a uint8 tensor. Floats survive JSON
exactly (shortest round-trip repr).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import numpy as np

from services.steps.detect import NO_MAP
from services.vision.defects import DefectRegion
from services.vision.inspector import Prediction


def encode_prediction(prediction: Prediction, extra: dict[str, Any] | None = None) -> bytes:
    """``prediction`` (its anomaly map left out) and ``extra`` fields as JSON bytes."""
    body = {
        "score_raw": float(prediction.score_raw),
        "score": float(prediction.score),
        "verdict": prediction.verdict,
        "defects": [asdict(defect) for defect in prediction.defects],
        "embedding": [float(x) for x in np.asarray(prediction.embedding, np.float32)],
        "member_scores": dict(prediction.member_scores),
        **(extra or {}),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def decode_prediction(data: bytes) -> tuple[Prediction, dict[str, Any]]:
    """The prediction (with an empty anomaly map) and the extra fields; raises ValueError for bytes
    that are not an encoded prediction."""
    try:
        body = json.loads(data.decode().rstrip())
        defects = [
            DefectRegion(
                bbox=tuple(d["bbox"]),
                area_px=int(d["area_px"]),
                area_share=float(d["area_share"]),
                max_score=float(d["max_score"]),
                mean_score=float(d["mean_score"]),
                centroid=tuple(d["centroid"]),
                location=str(d["location"]),
                severity=str(d["severity"]),
                embedding=tuple(float(v) for v in d.get("embedding", ())),
            )
            for d in body.pop("defects")
        ]
        prediction = Prediction(
            score_raw=float(body.pop("score_raw")),
            score=float(body.pop("score")),
            verdict=str(body.pop("verdict")),
            anomaly_map=NO_MAP,
            defects=defects,
            embedding=np.asarray(body.pop("embedding"), np.float32),
            member_scores={str(k): float(v) for k, v in body.pop("member_scores", {}).items()},
        )
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"not an encoded prediction: {err}") from err
    return prediction, body
