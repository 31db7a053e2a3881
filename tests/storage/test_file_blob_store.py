import errno
import os
from pathlib import Path

import pytest

from services.storage import file_blob_store
from services.storage.errors import BlobCorrupted, BlobStoreFull
from services.storage.file_blob_store import FileBlobStore
from services.storage.ports import BlobStore

PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


@pytest.fixture
def store(tmp_path: Path) -> FileBlobStore:
    return FileBlobStore(tmp_path / "blobs")


def _files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()]


def test_put_then_get_returns_the_bytes(store: FileBlobStore) -> None:
    ref = store.put(PNG_BYTES, "png", width=64, height=32)
    assert ref.uri.startswith("file:///")
    assert ref.size_bytes == len(PNG_BYTES)
    assert (ref.width, ref.height, ref.encoding) == (64, 32, "png")
    assert ref.uri.endswith(f"/{ref.sha256[:2]}/{ref.sha256}.png")
    assert store.exists(ref.uri)
    assert store.get(ref.uri) == PNG_BYTES


def test_the_store_satisfies_the_port(store: FileBlobStore) -> None:
    port: BlobStore = store
    assert port.exists(port.put(b"x", "jpeg", 1, 1).uri)


def test_put_is_idempotent(store: FileBlobStore) -> None:
    first = store.put(PNG_BYTES, "png", 64, 32)
    second = store.put(PNG_BYTES, "png", 64, 32)
    assert first == second
    assert _files(store.root) == [Path(first.uri.removeprefix("file://"))]


def test_delete_removes_the_blob_and_tolerates_a_second_delete(store: FileBlobStore) -> None:
    ref = store.put(PNG_BYTES, "png", 64, 32)
    store.delete(ref.uri)
    assert not store.exists(ref.uri)
    store.delete(ref.uri)
    with pytest.raises(FileNotFoundError, match="blob not found"):
        store.get(ref.uri)


def test_corruption_is_detected_on_get(store: FileBlobStore) -> None:
    ref = store.put(PNG_BYTES, "png", 64, 32)
    Path(ref.uri.removeprefix("file://")).write_bytes(PNG_BYTES[:-1] + b"!")
    with pytest.raises(BlobCorrupted, match="corrupted"):
        store.get(ref.uri)


def test_uris_outside_the_root_are_refused(store: FileBlobStore, tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"secret")
    ref = store.put(PNG_BYTES, "png", 64, 32)
    escaping = [
        secret.as_uri(),
        ref.uri.rsplit("/", 2)[0] + "/../secret.png",
        ref.uri.rsplit("/", 2)[0] + "/%2e%2e/secret.png",
        "file:///etc/passwd",
    ]
    link = store.root / "ab" / "link.png"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(secret)
    escaping.append(link.as_uri())
    for uri in escaping:
        for operation in (store.get, store.exists, store.delete):
            with pytest.raises(ValueError, match="outside the blob store root"):
                operation(uri)
    assert secret.read_bytes() == b"secret"


def test_files_in_the_root_that_are_not_blobs_are_refused(store: FileBlobStore) -> None:
    (store.root / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="does not name a blob"):
        store.delete((store.root / "notes.txt").as_uri())
    assert (store.root / "notes.txt").exists()


def test_unknown_encoding_is_refused_before_writing(store: FileBlobStore) -> None:
    with pytest.raises(ValueError, match="unsupported blob encoding"):
        store.put(PNG_BYTES, "gif", 64, 32)
    assert _files(store.root) == []


@pytest.mark.parametrize("group_commit", [False, True])
def test_full_disk_raises_blob_store_full_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, group_commit: bool
) -> None:
    store = FileBlobStore(tmp_path / "blobs", group_commit)

    def write_half_then_fail(fd: int, data: bytes, durable: bool) -> None:
        os.write(fd, data[: len(data) // 2])
        os.close(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(file_blob_store, "_write", write_half_then_fail)
    with pytest.raises(BlobStoreFull, match="is full") as caught:
        store.put(PNG_BYTES, "png", 64, 32)
    assert isinstance(caught.value, OSError)
    assert caught.value.errno == errno.ENOSPC
    assert _files(store.root) == []


def test_other_write_errors_pass_through_and_leave_no_file(
    store: FileBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(fd: int, data: bytes, durable: bool) -> None:
        os.close(fd)
        raise PermissionError(errno.EACCES, "denied")

    monkeypatch.setattr(file_blob_store, "_write", fail)
    with pytest.raises(PermissionError):
        store.put(PNG_BYTES, "png", 64, 32)
    assert _files(store.root) == []


def test_blobs_of_the_older_two_level_layout_stay_readable(store: FileBlobStore) -> None:
    ref = store.put(PNG_BYTES, "png", 64, 32)
    old_path = store.root / ref.sha256[:2] / ref.sha256[2:4] / f"{ref.sha256}.png"
    old_path.parent.mkdir(parents=True)
    Path(ref.uri.removeprefix("file://")).rename(old_path)
    assert store.exists(old_path.as_uri())
    assert store.get(old_path.as_uri()) == PNG_BYTES


def test_a_folder_removed_behind_the_store_is_made_again(store: FileBlobStore) -> None:
    ref = store.put(PNG_BYTES, "png", 64, 32)
    folder = Path(ref.uri.removeprefix("file://")).parent
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    again = store.put(PNG_BYTES, "png", 64, 32)
    assert store.get(again.uri) == PNG_BYTES
