"""Request bodies above max_request_bytes are refused with 413 before they are read whole."""

import asyncio
import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import Message, Receive, Scope, Send

from services.api.app import create_app
from services.api.limits import BodySizeLimitMiddleware
from services.api.settings import ApiSettings
from services.storage.sqlite_record_store import SqliteRecordStore
from services.storage.tiered_blob_store import TieredBlobStore
from tests.api.conftest import API_KEY

LIMIT = 4096
FIELDS = {"line_id": "line-1", "station_id": "station-1", "camera_id": "cam-1", "recipe": "housing-A"}
TOO_LARGE = {"detail": f"request body is larger than the limit of {LIMIT} bytes"}


@pytest.fixture
def small_client(records: SqliteRecordStore, blobs: TieredBlobStore) -> TestClient:
    settings = ApiSettings(keys=[API_KEY], max_request_bytes=LIMIT)
    return TestClient(create_app(settings, records, blobs), headers={"X-API-Key": API_KEY})


def test_a_body_declared_too_large_is_413_and_a_dead_letter(
    small_client: TestClient, records: SqliteRecordStore
) -> None:
    files = {"image": ("frame.png", b"\0" * (2 * LIMIT), "image/png")}
    response = small_client.post("/v1/inspect", data=FIELDS, files=files)
    assert response.status_code == 413
    assert response.json() == TOO_LARGE
    (letter,) = records.list_dead_letters()  # a frame lost is counted where the dashboard looks
    assert (letter.source, letter.reason) == ("ingest", f"oversized: {TOO_LARGE['detail']}")
    assert letter.original_ref.startswith("upload of ") and "bytes from testclient" in letter.original_ref
    # a client without a valid key is refused as well, and leaves nothing behind
    anonymous = small_client.post("/v1/inspect", data=FIELDS, files=files, headers={"X-API-Key": "wrong"})
    assert anonymous.status_code == 413 and records.count_dead_letters() == 1


def test_a_chunked_body_without_length_is_413(small_client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b"x" * 1024

    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    response = small_client.post("/v1/inspect", content=chunks(), headers=headers)
    assert response.status_code == 413
    assert response.json() == TOO_LARGE


def test_a_body_under_the_limit_goes_through(small_client: TestClient) -> None:
    files = {"image": ("frame.png", b"\0" * 100, "image/png")}
    response = small_client.post("/v1/inspect", data=FIELDS, files=files)
    assert response.status_code == 503  # reached the handler: this app has no model


def _run(app: BodySizeLimitMiddleware, chunks: int, content_length: int | None) -> tuple[int, int, dict]:
    """Send ``chunks`` chunks of 1 KiB through ``app``; returns (chunks pulled, status, JSON body)."""
    pulled = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"x" * 1024, "more_body": pulled < chunks}

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [] if content_length is None else [(b"content-length", str(content_length).encode())]
    scope: Scope = {"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}
    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return pulled, sent[0]["status"], json.loads(body) if sent[0]["status"] == 413 else {}


async def _read_body(scope: Scope, receive: Receive, send: Send) -> None:
    body = await Request(scope, receive).body()
    await PlainTextResponse(str(len(body)))(scope, receive, send)


def test_streamed_bytes_are_cut_off_once_past_the_limit() -> None:
    pulled, status, body = _run(BodySizeLimitMiddleware(_read_body, LIMIT), chunks=64, content_length=None)
    assert status == 413
    assert body == TOO_LARGE
    assert pulled == LIMIT // 1024 + 1


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    pulled, status, _ = _run(BodySizeLimitMiddleware(_read_body, LIMIT), chunks=64, content_length=64 * 1024)
    assert (pulled, status) == (0, 413)


def test_a_body_at_the_limit_is_read_whole() -> None:
    pulled, status, _ = _run(BodySizeLimitMiddleware(_read_body, LIMIT), chunks=4, content_length=None)
    assert (pulled, status) == (4, 200)
