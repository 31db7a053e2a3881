"""Retraining from reviews on real stores: the rule that calls for it, the training set it builds
(the model's images plus the frames confirmed good), the new version registered and promoted, and
the confirmed defects on its operating curve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from schemas.label import Review
from services.cli import main
from services.ingest.synthetic import render_part
from services.registry.files import FileModelRegistry
from services.registry.follow import production_inspectors
from services.storage.stores import open_blob_store, open_label_store
from services.vision.artifact import read_card
from services.vision.overlay import encode_png
from tests.conftest import TRAIN_PARTS
from tests.storage.factories import T0, make_label

pytestmark = pytest.mark.integration  # the command line end to end, on real stores


def test_confirmed_false_alarms_retrain_a_new_version(
    model_dir: Path, mobilenet_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = FileModelRegistry(tmp_path / "registry")
    old = registry.register(model_dir, "housing-A", "ops")
    registry.promote("housing-A", old.version, "ops")
    urls = {
        "registry": (tmp_path / "registry").as_uri(),
        "labels": f"sqlite:///{tmp_path}/labels.db",
        "blobs": (tmp_path / "blobs").as_uri(),
        "records": f"sqlite:///{tmp_path}/records.db",
    }
    labels, blobs = open_label_store(urls["labels"]), open_blob_store(urls["blobs"])
    rng = np.random.default_rng(7)
    for i in range(7):
        image, _, _ = render_part(rng, ["sink_mark"] if i >= 3 else [])
        ref = blobs.put(encode_png(image), "png", image.shape[1], image.shape[0])
        label = make_label(at_s=i, verdict="NG", queued=True)
        label = label.model_copy(update={"image": ref, "recipe": "housing-A", "model_version": old.version})
        labels.add_labels([label])
        if i < 6:  # the seventh stays unreviewed
            decided = Review.model_validate(
                {"decision": "good" if i < 3 else "defect", "reviewer": "m.keller", "reviewed_at": T0}
            )
            labels.review(label.frame_id, decided)
    blobs.sync()
    labels.close()
    blobs.close()
    stores = [arg for name, url in urls.items() for arg in (f"--{name}", url)]
    command = ["retrain", "--recipe", "housing-A", "--out", str(tmp_path / "retrain"), *stores]
    assert main([*command, "--check", "--false-alarms", "4", "--max-miss-rate", "0.99"]) == 0
    assert "no rule calls for retraining" in capsys.readouterr().out
    assert main([*command, "--check", "--false-alarms", "3", "--max-miss-rate", "0.99"]) == 0
    assert "3 confirmed false alarms" in capsys.readouterr().out
    assert not (tmp_path / "retrain").exists()  # a check does nothing

    code = main([*command, "--false-alarms", "3", "--weights", str(mobilenet_weights), "--promote"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"{TRAIN_PARTS} images of the last training, 3 confirmed good, 3 confirmed defective" in out
    stages = registry.stages("housing-A")
    assert stages.production is not None and stages.production != old.version
    new = read_card(registry.model_dir("housing-A", stages.production))
    assert new.training.n_images == TRAIN_PARTS + 3
    assert new.operating is not None and new.operating.defects == "real: confirmed by reviewers"
    assert len(new.operating.defect_scores) == 3
    entry = registry.versions("housing-A")[-1]
    assert entry.note is not None and entry.note.startswith("retrained: 3 confirmed false alarms")
    assert production_inspectors(registry)["housing-A"].card.version == stages.production
    assert main([*command, "--force"]) == 2  # the folder exists now: a new one is asked for
    assert "give a new folder" in capsys.readouterr().err

    # watching: a pass every so often; the version it registers waits for a person, not retrained again
    watch = [
        *command[:4],
        str(tmp_path / "watch"),
        *command[5:],
        "--force",
        "--watch",
        "0.01",
        "--rounds",
        "3",
    ]
    before = len(registry.versions("housing-A"))
    assert main([*watch, "--weights", str(mobilenet_weights)]) == 0
    out = capsys.readouterr().out
    assert len(registry.versions("housing-A")) == before + 1
    assert out.count("waits for a person's decision") == 2
    assert len(list((tmp_path / "watch").iterdir())) == 1
