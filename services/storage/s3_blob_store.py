"""BlobStore adapter on S3 or any S3-compatible object store (MinIO, Ceph RGW…), for clusters where
producers, workers and the API run on different machines with no shared volume.

``s3://BUCKET/PREFIX?endpoint_url=http://minio:9000&region=eu-central-1`` names the store; blobs
are ``PREFIX/ab/<sha256>.<encoding>`` objects, addressed by ``s3://BUCKET/KEY`` URIs. Credentials
come from boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an
instance role), never from the URL. A put is durable when S3 has answered, so :meth:`sync` has
nothing to do; ``put`` of bytes already stored is skipped after a HEAD. ``get`` checks the bytes
against the SHA-256 in the key, as the file store does.
"""

from __future__ import annotations

import errno
import hashlib
import re
from typing import Any, cast, get_args
from urllib.parse import parse_qsl, urlsplit

from schemas.blob import BlobEncoding, BlobRef
from services.storage.errors import BlobCorrupted

_ENCODINGS: tuple[str, ...] = get_args(BlobEncoding)
_BLOB_NAME = re.compile(r"[0-9a-f]{64}\.[a-z]+")
PARAMS = {"endpoint_url", "region"}
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "bmp": "image/bmp", "tiff": "image/tiff"}


class S3BlobStore:
    """Content-addressed blobs in ``bucket`` under ``prefix``."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
    ) -> None:
        if not bucket:
            raise ValueError("an S3 blob store needs a bucket: s3://BUCKET/PREFIX")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        if client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError as err:  # boto3 is a dependency; say so if an install lost it
                raise ValueError("s3:// blob stores need boto3 (pip install boto3)") from err
            config = Config(retries={"max_attempts": 5, "mode": "standard"})
            client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        self.client = client

    @classmethod
    def from_url(cls, url: str) -> S3BlobStore:
        parts = urlsplit(url)
        params = dict(parse_qsl(parts.query))
        unknown = sorted(set(params) - PARAMS)
        if unknown:
            raise ValueError(
                f"{url!r}: unknown parameters {', '.join(unknown)} (known: endpoint_url, region)"
            )
        return cls(parts.netloc, parts.path, params.get("endpoint_url"), params.get("region"))

    def close(self) -> None:
        self.client.close()

    def sync(self) -> None:
        """Nothing to do: S3 has stored an object when its put returns."""

    def put(self, data: bytes, encoding: str, width: int, height: int) -> BlobRef:
        if encoding not in _ENCODINGS:
            raise ValueError(f"unsupported blob encoding {encoding!r}; expected one of {_ENCODINGS}")
        sha256 = hashlib.sha256(data).hexdigest()
        key = "/".join(p for p in (self.prefix, sha256[:2], f"{sha256}.{encoding}") if p)
        if self._size(key) != len(data):
            self._call(
                self.client.put_object,
                key,
                Body=data,
                ContentType=CONTENT_TYPES.get(encoding, "application/octet-stream"),
                ChecksumAlgorithm="SHA256",
            )
        return BlobRef(
            uri=f"s3://{self.bucket}/{key}",
            sha256=sha256,
            size_bytes=len(data),
            width=width,
            height=height,
            encoding=cast(BlobEncoding, encoding),
        )

    def get(self, uri: str) -> bytes:
        key = self._key_of(uri)
        data = bytes(self._call(self.client.get_object, key)["Body"].read())
        actual = hashlib.sha256(data).hexdigest()
        expected = key.rsplit("/", 1)[-1].partition(".")[0]
        if actual != expected:
            raise BlobCorrupted(f"blob {uri} is corrupted: its bytes hash to {actual}, not {expected}")
        return data

    def delete(self, uri: str) -> None:
        """Remove the blob; deleting a blob that is already gone is not an error (S3's own rule)."""
        self._call(self.client.delete_object, self._key_of(uri))

    def exists(self, uri: str) -> bool:
        return self._size(self._key_of(uri)) is not None

    def _size(self, key: str) -> int | None:
        try:
            return int(self._call(self.client.head_object, key)["ContentLength"])
        except FileNotFoundError:
            return None

    def _call(self, method: Any, key: str, **kwargs: Any) -> Any:
        """``method(Bucket=…, Key=key, …)``; a missing object is FileNotFoundError, any other
        refusal or an unreachable endpoint an OSError naming the bucket and key (so that callers'
        retries and dead letters treat S3 as they treat a disk)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return method(Bucket=self.bucket, Key=key, **kwargs)
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(errno.ENOENT, f"blob not found: s3://{self.bucket}/{key}") from None
            raise OSError(f"S3 refused {method.__name__} of s3://{self.bucket}/{key}: {code} {err}") from err
        except BotoCoreError as err:
            raise OSError(f"S3 {method.__name__} of s3://{self.bucket}/{key} failed: {err}") from err

    def _key_of(self, uri: str) -> str:
        parts = urlsplit(uri)
        key = parts.path.lstrip("/")
        if parts.scheme != "s3" or parts.netloc != self.bucket:
            raise ValueError(f"blob URI {uri!r} is not in this store's bucket s3://{self.bucket}")
        if self.prefix and not key.startswith(self.prefix + "/"):
            raise ValueError(f"blob URI {uri!r} points outside the store's prefix {self.prefix!r}")
        if not _BLOB_NAME.fullmatch(key.rsplit("/", 1)[-1]):
            raise ValueError(f"blob URI {uri!r} does not name a blob (<sha256>.<encoding>)")
        return key
