"""Frame and process sources: folder, video, synthetic, CSV replay, simulator, and opening by URL."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest

from schemas.dead_letter import DeadLetter
from schemas.ids import uuid7_datetime, validate_uuid7
from schemas.process import ProcessSample
from services.ingest.csv_replay import CsvProcessSource
from services.ingest.folder import FolderSource
from services.ingest.frame_ids import replay_frame_id
from services.ingest.ports import CapturedFrame, FrameContext
from services.ingest.simulator_source import SimulatorSource
from services.ingest.synthetic import DEFAULT_START, SyntheticLine
from services.ingest.synthetic_source import SyntheticSource
from services.ingest.urls import open_frame_source, open_process_source
from services.ingest.video import VideoSource

T0 = datetime(2025, 3, 4, 8, 0, 0, tzinfo=UTC)
CONTEXT = FrameContext(line_id="line-2", station_id="st-9", camera_id="cam-3", recipe="cap-B")


def frames_only(items: list[CapturedFrame | DeadLetter]) -> list[CapturedFrame]:
    assert all(isinstance(item, CapturedFrame) for item in items)
    return [item for item in items if isinstance(item, CapturedFrame)]


def png(value: int) -> bytes:
    ok, data = cv2.imencode(".png", np.full((20, 24, 3), value, dtype=np.uint8))
    assert ok
    return bytes(data.tobytes())


# ------------------------------------------------------------------------------------- frame ids


def test_replay_frame_ids_are_uuid7_stamped_with_the_capture_time() -> None:
    frame_id = replay_frame_id(T0 + timedelta(milliseconds=123), "a/b.png")
    assert validate_uuid7(frame_id) == frame_id
    assert uuid7_datetime(frame_id) == T0 + timedelta(milliseconds=123)
    assert uuid.UUID(frame_id).version == 7


def test_replay_frame_ids_repeat_for_the_same_frame_and_differ_otherwise() -> None:
    assert replay_frame_id(T0, "a.png") == replay_frame_id(T0, "a.png")
    assert replay_frame_id(T0, "a.png") != replay_frame_id(T0, "b.png")
    assert replay_frame_id(T0, "a.png") != replay_frame_id(T0 + timedelta(milliseconds=1), "a.png")


# ----------------------------------------------------------------------------------------- folder


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "frames"
    (root / "b").mkdir(parents=True)
    for i, name in enumerate(["002.png", "001.png", "b/003.png"]):
        path = root / name
        path.write_bytes(png(10 * i))
        os.utime(path, (T0.timestamp() + i, T0.timestamp() + i))
    (root / "notes.txt").write_text("not a frame")
    return root


def test_folder_yields_image_files_in_path_order_with_the_context_names(folder: Path) -> None:
    frames = frames_only(list(FolderSource(folder, CONTEXT).frames()))
    assert [Path(f.source_ref).name for f in frames] == ["001.png", "002.png", "003.png"]
    first = frames[0]
    names = (first.line_id, first.station_id, first.camera_id, first.recipe)
    assert names == ("line-2", "st-9", "cam-3", "cap-B")
    assert first.data == (folder / "001.png").read_bytes() and first.image is None
    assert first.captured_at == T0 + timedelta(seconds=1)  # the file's modification time


def test_folder_replays_give_the_same_frame_ids(folder: Path) -> None:
    ids = [f.frame_id for f in frames_only(list(FolderSource(folder, CONTEXT).frames()))]
    again = [f.frame_id for f in frames_only(list(FolderSource(folder, CONTEXT).frames()))]
    assert ids == again and len(set(ids)) == 3


def test_folder_loop_starts_over(folder: Path) -> None:
    source = FolderSource(folder, CONTEXT, loop=True)
    stream = source.frames()
    refs = [Path(next(stream).source_ref).name for _ in range(7)]  # type: ignore[union-attr]
    assert refs == ["001.png", "002.png", "003.png"] * 2 + ["001.png"]


def test_a_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(FolderSource(tmp_path / "nope", CONTEXT).frames())


# ------------------------------------------------------------------------------------------ video


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (64, 48))
    assert writer.isOpened()
    for i in range(5):
        writer.write(np.full((48, 64, 3), (0, 0, 40 * i), dtype=np.uint8))  # BGR: ever redder
    writer.release()
    return path


def test_video_file_yields_decoded_rgb_frames_in_order(video: Path) -> None:
    source = VideoSource(video, CONTEXT, start=T0)
    frames = frames_only(list(source.frames()))
    source.close()
    assert len(frames) == 5
    assert all(f.image is not None and f.image.shape == (48, 64, 3) and f.data is None for f in frames)
    reds = [int(f.image[..., 0].mean()) for f in frames if f.image is not None]
    assert reds == sorted(reds) and reds[-1] > 100  # channel 0 is red: OpenCV's BGR was converted
    assert all(f.captured_at >= T0 for f in frames)
    assert len({f.frame_id for f in frames}) == 5
    assert frames[0].camera_id == "cam-3"


def test_video_replays_give_the_same_frame_ids(video: Path) -> None:
    first = [f.frame_id for f in frames_only(list(VideoSource(video, CONTEXT, start=T0).frames()))]
    again = [f.frame_id for f in frames_only(list(VideoSource(video, CONTEXT, start=T0).frames()))]
    assert first == again


def test_a_missing_video_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        VideoSource(tmp_path / "none.mp4", CONTEXT)


# -------------------------------------------------------------------------------------- synthetic


def test_synthetic_source_yields_the_lines_parts() -> None:
    frames = frames_only(list(SyntheticSource(seed=3, parts=4, camera_ids=("cam-a", "cam-b")).frames()))
    parts = list(SyntheticLine(seed=3, camera_ids=("cam-a", "cam-b")).parts(4))
    assert [f.part_id for f in frames] == [p.part_id for p in parts]
    assert [f.camera_id for f in frames] == ["cam-a", "cam-b", "cam-a", "cam-b"]
    assert [f.captured_at for f in frames] == [p.captured_at for p in parts]
    for frame, part in zip(frames, parts, strict=True):
        assert frame.image is not None
        np.testing.assert_array_equal(frame.image, part.image)


def test_synthetic_frame_ids_repeat_per_seed_and_differ_between_seeds() -> None:
    def ids(seed: int) -> list[str]:
        return [f.frame_id for f in frames_only(list(SyntheticSource(seed=seed, parts=3).frames()))]

    assert ids(1) == ids(1)
    assert set(ids(1)).isdisjoint(ids(2))


# -------------------------------------------------------------------------------------------- csv


def test_csv_replay_yields_samples_and_dead_letters_for_malformed_rows(tmp_path: Path) -> None:
    path = tmp_path / "process.csv"
    path.write_text(
        "ts,machine_id,mould_temp_c,hold_pressure_bar\n"
        "2025-03-04T08:00:00Z,imm-1,60.1,600\n"
        "2025-03-04T08:00:01Z,imm-1,sixty,600\n"  # not a number
        "2025-03-04T08:00:02,imm-1,60.3,600\n"  # no timezone
        "2025-03-04T08:00:03Z,imm-1,60.4\n"  # a cell short
        "yesterday,imm-1,60.5,600\n"  # not a time
        "2025-03-04T08:00:05Z,imm-1,nan,600\n"  # not finite
        "\n"
        "2025-03-04T09:00:06+01:00,imm-2,60.6,\n"  # an empty cell leaves the parameter out
    )
    items = list(CsvProcessSource(path, "line-1", units={"mould_temp_c": "°C"}).samples())
    samples = [item for item in items if isinstance(item, ProcessSample)]
    letters = [item for item in items if isinstance(item, DeadLetter)]
    assert [s.ts for s in samples] == [T0, T0 + timedelta(seconds=6)]
    assert samples[0].params == {"mould_temp_c": 60.1, "hold_pressure_bar": 600.0}
    assert samples[0].units == {"mould_temp_c": "°C"}
    assert samples[1].params == {"mould_temp_c": 60.6} and samples[1].machine_id == "imm-2"
    assert len(letters) == 5
    assert all(letter.source == "process" and letter.reason.startswith("malformed_row") for letter in letters)
    assert letters[0].original_ref.startswith(f"{path}:3: ")  # the file, the line and the row itself


def test_csv_without_the_required_columns_is_one_dead_letter(tmp_path: Path) -> None:
    path = tmp_path / "process.csv"
    path.write_text("time,machine,temp\n2025-03-04T08:00:00Z,imm-1,60\n")
    (letter,) = list(CsvProcessSource(path, "line-1").samples())
    assert isinstance(letter, DeadLetter) and letter.reason.startswith("malformed_header")


# -------------------------------------------------------------------------------------- simulator


def test_simulator_source_gives_the_process_behind_the_synthetic_line() -> None:
    line = SyntheticLine(seed=5)
    samples = list(SimulatorSource(SyntheticLine(seed=5).process, "line-1", "imm-1", samples=6).samples())
    assert len(samples) == 6
    for i, sample in enumerate(samples):
        assert isinstance(sample, ProcessSample)
        assert sample.ts == DEFAULT_START + timedelta(seconds=i)
        assert sample.params == line.process.state_at(sample.ts).as_params()
        assert sample.units["mould_temp_c"] == "°C"


# -------------------------------------------------------------------------------------------- urls


def test_frame_sources_open_by_url(folder: Path, video: Path) -> None:
    source = open_frame_source(f"folder://{folder}?camera=cam-8&rate=50", CONTEXT)
    assert isinstance(source, FolderSource)
    assert source.context.camera_id == "cam-8" and source.context.recipe == "cap-B"
    assert source.rate_hz == 50.0
    assert isinstance(open_frame_source(f"folder://{folder}?loop=1"), FolderSource)
    assert isinstance(open_frame_source(f"video://{video}?start=2025-03-04T08:00:00Z"), VideoSource)
    camera = open_frame_source("camera://0?camera=cam-1")
    assert isinstance(camera, VideoSource) and camera.target == 0 and camera.live
    rtsp = open_frame_source("rtsp://10.0.0.5:554/stream?channel=1#camera=cam-2", CONTEXT)
    assert isinstance(rtsp, VideoSource)
    assert rtsp.target == "rtsp://10.0.0.5:554/stream?channel=1" and rtsp.context.camera_id == "cam-2"
    synthetic = open_frame_source("synthetic://?seed=2&parts=3&cameras=a,b&period=1")
    assert isinstance(synthetic, SyntheticSource)
    assert synthetic.line.camera_ids == ("a", "b") and synthetic.parts == 3
    assert synthetic.line.frame_period_s == 1


def test_process_sources_open_by_url(tmp_path: Path) -> None:
    csv_path = tmp_path / "p.csv"
    csv_path.write_text("ts,machine_id\n")
    source = open_process_source(f"csv://{csv_path}?line=line-7")
    assert isinstance(source, CsvProcessSource) and source.line_id == "line-7"
    simulator = open_process_source("simulator://?seed=5&samples=2", "line-3")
    assert isinstance(simulator, SimulatorSource) and simulator.line_id == "line-3"
    expected = list(SimulatorSource(SyntheticLine(seed=5).process, "line-3", "imm-1", samples=2).samples())
    assert list(simulator.samples()) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://host/x", "unsupported frame source"),
        ("folder:///tmp?speed=2", "unknown parameter"),
        ("folder://otherhost/frames", "names host"),
        ("camera://front", "camera index"),
        ("synthetic://?start=2025-03-04T08:00:00", "timezone"),
    ],
)
def test_bad_frame_source_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_frame_source(url)


def test_bad_process_source_urls_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="unsupported process source"):
        open_process_source("mqtt://broker/topic")
    with pytest.raises(FileNotFoundError):
        open_process_source("csv:///no/such/file.csv")
