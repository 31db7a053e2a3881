"""Write the JSON Schema of every contract to ``schemas/json/`` and check that it is current.

``python -m schemas.export`` regenerates the files; ``python -m schemas.export --check`` lists
stale or missing ones and exits 1 if there are any.
"""

import argparse
import json
import sys
from pathlib import Path

from pydantic import BaseModel

from schemas.alert import Alert
from schemas.blob import BlobRef
from schemas.dead_letter import DeadLetter
from schemas.defect import Defect
from schemas.frame import Frame
from schemas.inspection import Inspection
from schemas.label import Label, LabelEvent, Review
from schemas.process import ProcessSample, ProcessSnapshot

MODELS: tuple[type[BaseModel], ...] = (
    Alert,
    BlobRef,
    DeadLetter,
    Defect,
    Frame,
    Inspection,
    Label,
    LabelEvent,
    ProcessSample,
    ProcessSnapshot,
    Review,
)
DEFAULT_DIR = Path(__file__).parent / "json"
SUFFIX = ".schema.json"


def render_schema(model: type[BaseModel]) -> str:
    """The JSON Schema text of ``model``: sorted keys, two-space indent, trailing newline."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **model.model_json_schema()}
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _expected(out_dir: Path) -> dict[Path, str]:
    return {out_dir / f"{model.__name__}{SUFFIX}": render_schema(model) for model in MODELS}


def export_json_schemas(out_dir: Path = DEFAULT_DIR) -> list[Path]:
    """Write one ``<Model>.schema.json`` per model, remove schema files of models that are gone."""
    out_dir.mkdir(parents=True, exist_ok=True)
    expected = _expected(out_dir)
    for path in out_dir.glob(f"*{SUFFIX}"):
        if path not in expected:
            path.unlink()
    for path, text in expected.items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
    return sorted(expected)


def check_json_schemas(out_dir: Path = DEFAULT_DIR) -> list[str]:
    """Problems with the schema files in ``out_dir``; empty when they match the models."""
    expected = _expected(out_dir)
    problems = []
    for path, text in sorted(expected.items()):
        if not path.exists():
            problems.append(f"missing: {path.name}")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"stale: {path.name}")
    problems += [f"unexpected: {p.name}" for p in sorted(out_dir.glob(f"*{SUFFIX}")) if p not in expected]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out_dir", nargs="?", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    args = parser.parse_args(argv)
    if args.check:
        problems = check_json_schemas(args.out_dir)
        for problem in problems:
            print(problem)
        if problems:
            print("run `python -m schemas.export` to regenerate")
        return 1 if problems else 0
    for path in export_json_schemas(args.out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
