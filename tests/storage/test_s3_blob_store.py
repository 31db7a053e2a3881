"""The S3 blob store against a real S3-compatible server started by the test: moto's standalone
server (``moto_server``, from the PyPI package ``moto[server]``) on a loopback port, spoken to over
HTTP by boto3 exactly as MinIO or AWS would be. Not AWS itself: nothing leaves this machine."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from schemas.ids import new_frame_id
from services.ingest.ports import CapturedFrame
from services.network import free_port
from services.steps.admit import AdmissionRules, claim, encode_frame, load_frame
from services.storage.errors import BlobCorrupted
from services.storage.ports import BlobStore
from services.storage.s3_blob_store import S3BlobStore
from services.storage.stores import open_blob_store

pytestmark = pytest.mark.integration
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
BUCKET = "linewatch-blobs"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a moto server with the bucket made, dummy credentials set."""
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    saved = {
        k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    url = f"http://127.0.0.1:{port}"
    import boto3

    deadline = time.monotonic() + 30
    while True:
        try:
            boto3.client("s3", endpoint_url=url).create_bucket(Bucket=BUCKET)
            break
        except Exception:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise
            time.sleep(0.2)
    yield url
    server.terminate()
    server.wait(10)
    log.close()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def store(endpoint: str, request: pytest.FixtureRequest) -> Iterator[S3BlobStore]:
    s3 = S3BlobStore.from_url(f"s3://{BUCKET}/{request.node.name[:40]}?endpoint_url={endpoint}")
    yield s3
    s3.close()


def test_put_then_get_returns_the_bytes(store: S3BlobStore) -> None:
    ref = store.put(PNG_BYTES, "png", width=64, height=32)
    assert ref.uri.startswith(f"s3://{BUCKET}/") and ref.uri.endswith(f"/{ref.sha256[:2]}/{ref.sha256}.png")
    assert (ref.size_bytes, ref.width, ref.height, ref.encoding) == (len(PNG_BYTES), 64, 32, "png")
    assert store.exists(ref.uri)
    assert store.get(ref.uri) == PNG_BYTES
    port: BlobStore = store
    port.sync()  # nothing to do, and nothing goes wrong


def test_put_is_idempotent_and_delete_tolerates_a_second_delete(store: S3BlobStore) -> None:
    first, second = store.put(PNG_BYTES, "png", 64, 32), store.put(PNG_BYTES, "png", 64, 32)
    assert first == second
    listed = store.client.list_objects_v2(Bucket=BUCKET, Prefix=store.prefix)["Contents"]
    assert len(listed) == 1
    store.delete(first.uri)
    assert not store.exists(first.uri)
    store.delete(first.uri)
    with pytest.raises(FileNotFoundError, match="blob not found"):
        store.get(first.uri)


def test_corruption_is_detected_on_get(store: S3BlobStore) -> None:
    ref = store.put(PNG_BYTES, "png", 64, 32)
    key = ref.uri.split(f"s3://{BUCKET}/", 1)[1]
    store.client.put_object(Bucket=BUCKET, Key=key, Body=b"something else")
    with pytest.raises(BlobCorrupted, match="corrupted"):
        store.get(ref.uri)


def test_uris_of_other_buckets_prefixes_or_names_are_refused(store: S3BlobStore) -> None:
    ref = store.put(PNG_BYTES, "png", 64, 32)
    for uri in (
        ref.uri.replace(BUCKET, "other-bucket"),
        ref.uri.replace(store.prefix, "another-prefix"),
        f"s3://{BUCKET}/{store.prefix}/ab/not-a-blob.png",
        ref.uri.replace("s3://", "file:///"),
    ):
        with pytest.raises(ValueError):
            store.get(uri)
    with pytest.raises(ValueError, match="unsupported blob encoding"):
        store.put(b"x", "gif", 1, 1)


def test_an_unreachable_endpoint_is_an_os_error_naming_the_blob() -> None:
    s3 = S3BlobStore("b", "p", endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(OSError, match="s3://b/p/"):
        s3.put(PNG_BYTES, "png", 1, 1)


def test_bad_urls_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="unknown parameters"):
        open_blob_store("s3://bucket/prefix?endpoint=http://x")
    with pytest.raises(ValueError, match="needs a bucket"):
        open_blob_store("s3:///prefix")


def test_a_frame_claimed_into_s3_is_loaded_back_by_a_worker(endpoint: str) -> None:
    """The claim check between machines: a producer stores the bytes, a worker elsewhere loads them."""
    url = f"s3://{BUCKET}/claims?endpoint_url={endpoint}"
    image = (np.arange(48 * 64 * 3) % 251).astype(np.uint8).reshape(48, 64, 3)
    captured = CapturedFrame(
        frame_id=new_frame_id(),
        line_id="line-1",
        station_id="st-1",
        camera_id="cam-1",
        recipe="housing-A",
        captured_at=datetime.now(UTC),
        source_ref="test",
        data=encode_frame(image),
    )
    producer, worker = open_blob_store(url), open_blob_store(url)
    try:
        claimed = claim(captured, AdmissionRules(recipes=frozenset({"housing-A"})), producer)
        assert claimed.frame is not None, claimed.letter
        assert claimed.frame.image.uri.startswith(f"s3://{BUCKET}/claims/")
        loaded = load_frame(claimed.frame, worker)
        assert loaded.letter is None and loaded.image is not None
        np.testing.assert_array_equal(loaded.image, image)
    finally:
        producer.close()
        worker.close()
