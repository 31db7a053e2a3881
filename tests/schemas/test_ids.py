import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from schemas import ids
from schemas.frame import FRAME_EXAMPLE, Frame
from schemas.ids import Uuid7Generator, new_frame_id, new_uuid7, uuid7_datetime, validate_uuid7


def test_frame_id_has_version_7_and_rfc_variant() -> None:
    frame_id = new_frame_id()
    parsed = uuid.UUID(frame_id)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert str(parsed) == frame_id


def test_frame_id_carries_the_current_unix_milliseconds() -> None:
    before = datetime.now(UTC)
    moment = uuid7_datetime(new_frame_id())
    after = datetime.now(UTC)
    assert before - timedelta(milliseconds=1) <= moment <= after


def test_ids_are_strictly_increasing_within_a_process() -> None:
    generated = [new_uuid7() for _ in range(20_000)]
    assert generated == sorted(generated)
    assert len(set(generated)) == len(generated)


def test_same_millisecond_and_clock_going_back_stay_monotonic() -> None:
    clock = iter([5_000, 5_000, 5_000, 4_000, 6_000])
    generate = Uuid7Generator(clock_ms=lambda: next(clock))
    generated = [generate() for _ in range(5)]
    assert generated == sorted(generated)
    assert len(set(generated)) == 5
    assert [uuid.UUID(value).int >> 80 for value in generated] == [5_000, 5_000, 5_000, 5_000, 6_000]


def test_random_bits_overflow_moves_to_the_next_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ids.secrets, "randbits", lambda bits: (1 << bits) - 1)
    generate = Uuid7Generator(clock_ms=lambda: 7_000)
    first, second = generate(), generate()
    assert first < second
    assert uuid.UUID(second).int >> 80 == 7_001
    assert uuid.UUID(second).version == 7


def test_ids_from_many_threads_are_unique() -> None:
    results: list[list[str]] = [[] for _ in range(4)]

    def work(out: list[str]) -> None:
        out.extend(new_frame_id() for _ in range(2_000))

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({value for out in results for value in out}) == 8_000


def test_validate_uuid7_normalises_case() -> None:
    assert validate_uuid7("01956039-694B-7C2E-9A41-5D3E2B7F8C10") == "01956039-694b-7c2e-9a41-5d3e2b7f8c10"


@pytest.mark.parametrize(
    "value",
    [
        str(uuid.uuid4()),
        "01956039-694b-7c2e-1a41-5d3e2b7f8c10",  # wrong variant
        "01956039694b7c2e9a415d3e2b7f8c10",  # not hyphenated
        "frame-1",
        "",
    ],
)
def test_validate_uuid7_rejects_other_strings(value: str) -> None:
    with pytest.raises(ValueError, match="not a UUIDv7"):
        validate_uuid7(value)


def test_frame_rejects_a_uuid4_frame_id() -> None:
    with pytest.raises(ValidationError, match="not a UUIDv7"):
        Frame.model_validate({**FRAME_EXAMPLE, "frame_id": str(uuid.uuid4())})
