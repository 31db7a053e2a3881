"""Adapters chosen by URL: a table of scheme → ``"module:attribute"``, imported only when used.

Opening a SQLite store does not import the Elasticsearch client, and reading a folder does not
import OpenCV's video code: each adapter's module (and what it depends on) is imported the first
time a URL with its scheme is opened.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def url_scheme(url: str) -> str:
    """The URL's scheme, lower case ('' when it has none)."""
    scheme, colon, _ = url.partition(":")
    return scheme.lower() if colon and scheme.replace("+", "").replace("-", "").isalnum() else ""


def load_adapter(table: Mapping[str, str], url: str, kind: str, example: str) -> Any:
    """The attribute that ``table`` names for ``url``'s scheme, imported now; a ValueError naming the
    schemes known for ``kind`` (e.g. "record store URL") and an ``example`` URL when there is none."""
    scheme = url_scheme(url)
    target = table.get(scheme)
    if target is None:
        known = ", ".join(f"{name}:" for name in table)
        raise ValueError(
            f"unsupported {kind} {url!r}: scheme {scheme!r} is not one of {known} (e.g. {example})"
        )
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)
