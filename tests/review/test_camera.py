"""Per-camera thresholds: set from the camera's recent good frames (records and reviews on real
SQLite stores), kept on the card, and applied by the finish step to that camera's frames only."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from schemas.label import Review
from services.cli import main
from services.review.autolabel import label_of
from services.steps.detect import detect_batch
from services.steps.finish import finish_batch
from services.storage.sqlite_label_store import SqliteLabelStore
from services.storage.sqlite_record_store import SqliteRecordStore
from services.storage.tiered_blob_store import TieredBlobStore
from services.vision.artifact import read_card
from services.vision.calibration import fit_threshold
from services.vision.inspector import Inspector
from tests.storage.factories import T0, make_inspection
from tests.stream.test_steps import frame


def test_a_camera_gets_thresholds_of_its_own(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    for path in model_dir.iterdir():
        (model / path.name).write_bytes(path.read_bytes())
    card = read_card(model)
    # cam-2 sees every part brighter: its good frames score about twice the model's threshold
    rng = np.random.default_rng(5)
    scores = card.image_calibration.threshold * 2 * np.exp(rng.normal(0, 0.05, 120))
    records = SqliteRecordStore(tmp_path / "records.db")
    labels = SqliteLabelStore(tmp_path / "labels.db")
    stored = []
    for i, raw in enumerate(scores):
        verdict = "NG" if i < 10 else "OK"  # the model's own threshold calls some of them NG
        inspection = make_inspection(at_s=i, camera_id="cam-2", verdict=verdict)  # type: ignore[arg-type]
        inspection = inspection.model_copy(update={"score_raw": float(raw), "model_version": card.version})
        records.upsert_inspection(inspection)
        stored.append(inspection)
    for inspection in stored[:6]:  # six of the NG frames are confirmed good, one defective, three unknown
        labels.add_labels([label_of(inspection, None, T0, 1.0, ("review band",))])
        labels.review(inspection.frame_id, Review(decision="good", reviewer="qa", reviewed_at=T0))
    defect = stored[6]
    labels.add_labels([label_of(defect, None, T0, 1.0, ("review band",))])
    labels.review(defect.frame_id, Review(decision="defect", reviewer="qa", reviewed_at=T0))
    records.close()
    labels.close()
    stores = ["--records", f"sqlite:///{tmp_path}/records.db", "--labels", f"sqlite:///{tmp_path}/labels.db"]
    since = (T0 - timedelta(hours=1)).isoformat()
    command = ["calibrate", "--model", str(model), "--camera", "cam-2", *stores, "--since", since]
    assert main(command) == 0
    out = capsys.readouterr().out
    assert "on 116 good frames" in out and "6 confirmed good" in out
    assert "1 confirmed defective, 3 NG or REVIEW frames nobody reviewed" in out
    own = read_card(model).cameras["cam-2"]
    goods = [s for i, s in enumerate(scores) if i not in (6, 7, 8, 9)]
    assert own.image_calibration.threshold == pytest.approx(fit_threshold(np.asarray(goods)).threshold)
    assert own.image_calibration.threshold > 1.5 * card.image_calibration.threshold
    assert own.review is not None and own.review.threshold < own.image_calibration.threshold

    # the finish step grades cam-2's frames by its own thresholds, cam-1's by the model's
    inspector = Inspector.load(model)
    picture = np.full((64, 64, 3), 140, np.uint8)
    detected = detect_batch(inspector, [picture, picture])
    raw = detected.predictions[0].score_raw
    own = own.model_copy(
        update={"image_calibration": own.image_calibration.model_copy(update={"threshold": raw * 0.5})}
    )
    detected = detected.__class__(**{**detected.__dict__, "cameras": {"cam-2": own}})
    frames = [frame(), frame().model_copy(update={"camera_id": "cam-2"})]
    blobs = TieredBlobStore.at(tmp_path / "blobs")
    first, second = finish_batch(frames, detected, blobs)
    blobs.close()
    assert first.verdict == detected.predictions[0].verdict and first.score == pytest.approx(
        detected.predictions[0].score
    )
    assert second.verdict == "NG" and second.score > 0.5  # twice cam-2's threshold

    assert main([*command[:5], "--off"]) == 0
    assert read_card(model).cameras == {}
    assert main([*command[:5], "--off"]) == 2
    few = ["calibrate", "--model", str(model), "--camera", "cam-9", *stores, "--since", since]
    assert main(few) == 2 and "0 good frames" in capsys.readouterr().err
