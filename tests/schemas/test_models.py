from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from schemas.alert import ALERT_EXAMPLE, Alert
from schemas.blob import FRAME_BLOB_EXAMPLE, BlobRef
from schemas.dead_letter import DEAD_LETTER_EXAMPLE, MAX_REF_CHARS, DeadLetter
from schemas.defect import DEFECT_EXAMPLE, Defect
from schemas.export import MODELS
from schemas.frame import FRAME_EXAMPLE, Frame
from schemas.inspection import INSPECTION_EXAMPLE, Inspection
from schemas.process import PROCESS_SAMPLE_EXAMPLE, PROCESS_SNAPSHOT_EXAMPLE, ProcessSample, ProcessSnapshot


def _examples(model: type[BaseModel]) -> list[Any]:
    extra = model.model_config.get("json_schema_extra")
    assert isinstance(extra, dict), f"{model.__name__} has no json_schema_extra examples"
    examples = extra["examples"]
    assert isinstance(examples, list)
    return examples


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.__name__)
def test_examples_validate_and_round_trip(model: type[BaseModel]) -> None:
    examples = _examples(model)
    assert examples
    for example in examples:
        record = model.model_validate(example)
        assert model.model_validate_json(record.model_dump_json()) == record


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.__name__)
def test_every_model_carries_schema_version_1(model: type[BaseModel]) -> None:
    example = _examples(model)[0]
    assert model.model_validate(example).model_dump()["schema_version"] == 1
    with pytest.raises(ValidationError, match="schema_version"):
        model.model_validate({**example, "schema_version": 2})


@pytest.mark.parametrize(
    ("model", "example", "field"),
    [
        (Frame, FRAME_EXAMPLE, "captured_at"),
        (ProcessSample, PROCESS_SAMPLE_EXAMPLE, "ts"),
        (ProcessSnapshot, PROCESS_SNAPSHOT_EXAMPLE, "sample_ts"),
        (Inspection, INSPECTION_EXAMPLE, "captured_at"),
        (Inspection, INSPECTION_EXAMPLE, "inspected_at"),
        (Alert, ALERT_EXAMPLE, "raised_at"),
        (DeadLetter, DEAD_LETTER_EXAMPLE, "failed_at"),
    ],
)
def test_naive_timestamps_are_rejected(model: type[BaseModel], example: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match="has no timezone") as caught:
        model.model_validate({**example, field: "2025-03-04T08:15:30"})
    assert caught.value.errors()[0]["loc"] == (field,)
    with pytest.raises(ValidationError, match="has no timezone"):
        model.model_validate({**example, field: datetime(2025, 3, 4, 8, 15, 30)})


def test_aware_timestamps_are_converted_to_utc() -> None:
    frame = Frame.model_validate({**FRAME_EXAMPLE, "captured_at": "2025-03-04T09:15:30.5+01:00"})
    assert frame.captured_at == datetime(2025, 3, 4, 8, 15, 30, 500_000, tzinfo=UTC)
    assert frame.captured_at.utcoffset() is not None
    assert frame.captured_at.tzinfo is UTC
    assert '"captured_at":"2025-03-04T08:15:30.500000Z"' in frame.model_dump_json()


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValidationError, match="camera_name"):
        Frame.model_validate({**FRAME_EXAMPLE, "camera_name": "top"})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), "nan"])
def test_process_values_must_be_finite(value: float | str) -> None:
    with pytest.raises(ValidationError, match="finite number") as caught:
        ProcessSample.model_validate({**PROCESS_SAMPLE_EXAMPLE, "params": {"weld_current_a": value}})
    assert caught.value.errors()[0]["loc"] == ("params", "weld_current_a")


@pytest.mark.parametrize("name", ["", "   "])
def test_process_parameter_names_must_not_be_empty(name: str) -> None:
    with pytest.raises(ValidationError, match="names must be non-empty"):
        ProcessSample.model_validate({**PROCESS_SAMPLE_EXAMPLE, "params": {name: 1.0}})


def test_process_sample_units_are_optional() -> None:
    without_units = {key: value for key, value in PROCESS_SAMPLE_EXAMPLE.items() if key != "units"}
    assert ProcessSample.model_validate(without_units).units == {}


def test_missing_process_snapshot_has_no_params() -> None:
    assert ProcessSnapshot(status="missing").params == {}
    with pytest.raises(ValidationError, match="must have empty params"):
        ProcessSnapshot(status="missing", params={"weld_current_a": 1.0})


def test_ok_process_snapshot_needs_its_sample_time() -> None:
    with pytest.raises(ValidationError, match="needs the sample_ts"):
        ProcessSnapshot(status="ok", params={"weld_current_a": 1.0})


@pytest.mark.parametrize(
    ("model", "example", "change"),
    [
        (BlobRef, FRAME_BLOB_EXAMPLE, {"sha256": "ABC"}),
        (BlobRef, FRAME_BLOB_EXAMPLE, {"encoding": "gif"}),
        (BlobRef, FRAME_BLOB_EXAMPLE, {"width": 0}),
        (Defect, DEFECT_EXAMPLE, {"area_share": 1.2}),
        (Defect, DEFECT_EXAMPLE, {"location": "upper_left"}),
        (Defect, DEFECT_EXAMPLE, {"severity": "fatal"}),
        (Defect, DEFECT_EXAMPLE, {"mean_score": 0.99}),
        (Inspection, INSPECTION_EXAMPLE, {"score": 1.5}),
        (Inspection, INSPECTION_EXAMPLE, {"verdict": "ng"}),
        (Inspection, INSPECTION_EXAMPLE, {"embedding": [0.1, float("nan")]}),
        (Inspection, INSPECTION_EXAMPLE, {"line_id": "  "}),
        (Alert, ALERT_EXAMPLE, {"severity": "urgent"}),
    ],
)
def test_invalid_values_are_rejected(
    model: type[BaseModel], example: dict[str, Any], change: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError):
        model.model_validate({**example, **change})


def test_records_are_immutable() -> None:
    frame = Frame.model_validate(FRAME_EXAMPLE)
    with pytest.raises(ValidationError, match="frozen"):
        frame.line_id = "other"


def test_dead_letter_keeps_bad_input_and_cuts_long_excerpts() -> None:
    letter = DeadLetter.model_validate(
        {**DEAD_LETTER_EXAMPLE, "frame_id": "not-a-uuid", "original_ref": "x" * 10_000}
    )
    assert letter.frame_id == "not-a-uuid"
    assert len(letter.original_ref) == MAX_REF_CHARS
    assert letter.original_ref.endswith("…")
