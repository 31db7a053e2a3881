import json
from pathlib import Path

from schemas.export import DEFAULT_DIR, MODELS, check_json_schemas, export_json_schemas, main


def test_export_writes_one_deterministic_file_per_model(tmp_path: Path) -> None:
    first = export_json_schemas(tmp_path / "a")
    second = export_json_schemas(tmp_path / "b")
    assert [path.name for path in first] == sorted(f"{model.__name__}.schema.json" for model in MODELS)
    for one, two in zip(first, second, strict=True):
        text = one.read_text(encoding="utf-8")
        assert text == two.read_text(encoding="utf-8")
        assert text.endswith("}\n")
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        assert json.loads(text)["examples"]


def test_check_detects_stale_missing_and_unexpected_files(tmp_path: Path) -> None:
    export_json_schemas(tmp_path)
    assert check_json_schemas(tmp_path) == []

    frame_schema = tmp_path / "Frame.schema.json"
    frame_schema.write_text(frame_schema.read_text(encoding="utf-8").replace("camera", "kamera"))
    (tmp_path / "Alert.schema.json").unlink()
    (tmp_path / "Old.schema.json").write_text("{}\n")
    assert check_json_schemas(tmp_path) == [
        "missing: Alert.schema.json",
        "stale: Frame.schema.json",
        "unexpected: Old.schema.json",
    ]

    export_json_schemas(tmp_path)
    assert check_json_schemas(tmp_path) == []
    assert not (tmp_path / "Old.schema.json").exists()


def test_command_line_check_exit_codes(tmp_path: Path) -> None:
    assert main(["--check", str(tmp_path)]) == 1
    assert main([str(tmp_path)]) == 0
    assert main(["--check", str(tmp_path)]) == 0


def test_committed_json_schemas_are_current() -> None:
    assert check_json_schemas(DEFAULT_DIR) == [], "run `python -m schemas.export` and commit schemas/json/"
