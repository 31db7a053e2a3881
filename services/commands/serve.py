"""``linewatch serve``: the HTTP API and dashboard alone, over an existing record and blob store."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from services.api.settings import ApiSettings, hash_key

log = logging.getLogger(__name__)


def add_commands(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve the HTTP API and dashboard on an existing store",
        description="API keys come from LINEWATCH_API_KEYS (plain) or LINEWATCH_API_KEY_HASHES (SHA-256).",
    )
    serve.add_argument(
        "--records", default="sqlite:///linewatch-data/records.db", help="record store URL (%(default)s)"
    )
    serve.add_argument("--blobs", default="file:linewatch-data/blobs", help="blob store URL (%(default)s)")
    serve.add_argument(
        "--registry", metavar="URL", help="model registry URL: /v1/registry (list, promote, roll back)"
    )
    serve.add_argument(
        "--labels",
        help="label store URL: the review queue, /v1/labels (default: labels.db beside a sqlite:// record"
        " store; none beside another, and /v1/labels answers 503)",
    )
    serve.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[RECIPE=]DIR",
        help="model directory for frames of RECIPE (default: the model's name); enables POST /v1/inspect; "
        "repeat for more recipes",
    )
    serve.add_argument(
        "--inference",
        default=None,
        metavar="URL",
        help="where uploads are scored: process://?detectors=2&threads=1 (default), local://?detectors=N, "
        "or triton://HOST:8001 (the --model recipes' ensembles; their folders are not loaded)",
    )
    serve.add_argument("--host", help="address to listen on (default LINEWATCH_API_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default LINEWATCH_API_PORT or 8000)")
    serve.add_argument(
        "--hash-key",
        metavar="KEY",
        help="print the SHA-256 hash of KEY for LINEWATCH_API_KEY_HASHES and exit ('-' reads it from stdin)",
    )
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    if args.hash_key is not None:
        key = sys.stdin.readline().strip() if args.hash_key == "-" else args.hash_key
        print(hash_key(key))
        return 0
    overrides = {name: getattr(args, name) for name in ("host", "port") if getattr(args, name) is not None}
    try:
        settings = ApiSettings(**overrides)
    except ValidationError as err:
        print(f"linewatch serve: error: invalid API settings:\n{err}", file=sys.stderr)
        return 2
    labels = args.labels or labels_beside(args.records)
    return serve(settings, args.records, args.blobs, args.model, args.inference, labels, args.registry)


def labels_beside(records_url: str) -> str | None:
    """``sqlite:///DIR/labels.db`` for a ``sqlite:///DIR/records.db`` record store; None for others
    (an in-memory SQLite or a server: name the label store yourself)."""
    from services.storage.urls import sqlite_url_to_path

    if not records_url.startswith("sqlite:///"):
        return None
    path = sqlite_url_to_path(records_url)
    if path == ":memory:":
        return None
    return f"sqlite:///{Path(path).with_name('labels.db')}"


def serve(
    settings: ApiSettings,
    records_url: str,
    blobs_url: str,
    model_args: list[str],
    inference_url: str | None = None,
    labels_url: str | None = None,
    registry_url: str | None = None,
) -> int:
    """Run the API with uvicorn until interrupted."""
    import uvicorn

    from services.api.server import ApiServerError
    from services.commands.compose import (
        SERVE_INFERENCE_URL,
        build_api,
        load_models,
        open_stores,
        parse_model_args,
    )
    from services.inference.urls import is_remote

    url = inference_url or SERVE_INFERENCE_URL
    try:
        models = parse_model_args(model_args)
        inspectors = {} if is_remote(url) else load_models(models)
        stores = open_stores(records_url, blobs_url, labels_url=labels_url)
    except (ValueError, OSError) as err:
        print(f"linewatch serve: error: {err}", file=sys.stderr)
        return 2
    try:
        api = build_api(
            settings, stores, inspectors, inference_url=url, recipes=models, registry_url=registry_url
        )
    except (ApiServerError, ValueError) as err:  # refused settings, a bad inference URL
        stores.close()
        print(f"linewatch serve: error: {err}", file=sys.stderr)
        return 2
    served = ", ".join(f"{recipe}: {path}" for recipe, path in models.items()) or "no model"
    log.info(
        "serving %s and %s with %s on http://%s:%d",
        records_url,
        blobs_url,
        served,
        settings.host,
        settings.port,
    )
    try:
        try:
            api.start_inference()
        except RuntimeError as err:  # a detector process or the inference server did not start
            print(f"linewatch serve: error: {err}", file=sys.stderr)
            return 1
        uvicorn.run(api.app, host=settings.host, port=settings.port, log_level="info")
    finally:
        api.close()
        stores.close()
    return 0
