"""`linewatch predict` keeps every result: images of the same name from different folders."""

from pathlib import Path

from services.commands.vision import output_names


def test_images_of_the_same_name_get_names_of_their_own(tmp_path: Path) -> None:
    good, broken = tmp_path / "bottle/test/good/000.png", tmp_path / "bottle/test/broken_large/000.png"
    other = tmp_path / "bottle/test/good/001.png"
    names = output_names([good, broken, other])
    assert names == {good: "good-000", broken: "broken_large-000", other: "001"}


def test_deeper_folders_are_used_only_when_needed(tmp_path: Path) -> None:
    a, b = tmp_path / "line-1/cam/0.png", tmp_path / "line-2/cam/0.png"
    assert output_names([a, b]) == {a: "line-1-cam-0", b: "line-2-cam-0"}


def test_the_same_file_twice_is_one_name(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    assert output_names([path, path]) == {path: "x"}  # the command writes x and x-2
