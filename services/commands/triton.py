"""``linewatch triton export|install|serve``: models onto a Triton Inference Server."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path


def add_commands(sub: argparse._SubParsersAction) -> None:
    triton = sub.add_parser(
        "triton",
        help="Triton Inference Server: export models into a model repository, install or serve one",
        description="The distributed line scores frames on a Triton Inference Server "
        "(inference: triton://HOST:8001). `export` lays out a model as a version of its recipe's "
        "ensemble; `install` unpacks tritonserver (CPU and CUDA) from PyPI; `serve` runs it locally.",
    )
    actions = triton.add_subparsers(dest="action", required=True)
    export = actions.add_parser(
        "export",
        help="lay out a model as a new version of its recipe's models in a Triton model repository",
        description="Writes <recipe>-preprocess, <recipe>-detector and the ensemble <recipe> (config.pbtxt "
        "and a numbered version folder with the model copied in). Triton serves the newest version.",
    )
    export.add_argument("--model", type=Path, required=True, help="a model directory (from linewatch train)")
    export.add_argument("--repo", type=Path, required=True, help="the model repository (created if missing)")
    export.add_argument("--recipe", help="the recipe it serves (default: the model's name)")
    export.add_argument("--version", type=int, help="version number (default: one past the newest)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing version")
    export.add_argument(
        "--instances", type=int, default=1, help="detector (and an ensemble's refine) instances (%(default)s)"
    )
    export.add_argument("--max-batch", type=int, default=8, help="largest batch (%(default)s)")
    export.add_argument(
        "--queue-delay-us",
        type=int,
        default=2000,
        help="dynamic batcher's wait to fill a batch (%(default)s)",
    )
    export.add_argument("--no-dynamic-batching", action="store_true", help="score each request alone")
    export.add_argument(
        "--torch-threads", type=int, default=1, help="torch threads per instance (%(default)s)"
    )
    export.set_defaults(handler=run_export)

    install = actions.add_parser(
        "install",
        help="unpack tritonserver from the nvidia-pytriton wheel (downloaded with pip) into a folder",
    )
    install.add_argument("--home", type=Path, help="where (default $LINEWATCH_TRITON_HOME or .triton)")
    install.add_argument("--wheel", type=Path, help="a downloaded nvidia-pytriton wheel (offline installs)")
    install.set_defaults(handler=run_install)

    serve = actions.add_parser(
        "serve",
        help="run tritonserver over a model repository on this machine (Ctrl-C stops it)",
        description="Binds 127.0.0.1; prints the inference URL for linewatch.yaml. For a plant, run the "
        "NGC tritonserver image (docker-compose.yml) over the same repository.",
    )
    serve.add_argument("--repo", type=Path, required=True, help="the model repository")
    serve.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (%(default)s)")
    serve.add_argument("--home", type=Path, help="where tritonserver is installed")
    serve.add_argument("--log", type=Path, default=Path("runs/triton.log"), help="server log (%(default)s)")
    serve.set_defaults(handler=run_serve)


def run_export(args: argparse.Namespace) -> int:
    from services.inference.triton_repo import Serving, export

    try:
        serving = Serving(
            instances=args.instances,
            max_batch=args.max_batch,
            dynamic_batching=not args.no_dynamic_batching,
            queue_delay_us=args.queue_delay_us,
            torch_threads=args.torch_threads,
        )
        recipe, version = export(args.model, args.repo, args.recipe, args.version, serving, args.overwrite)
    except (ValueError, FileExistsError) as err:
        print(f"linewatch triton export: error: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.model} as version {version} of recipe {recipe!r} into {args.repo}")
    print(f"serve it: linewatch triton serve --repo {args.repo}   (inference: triton://127.0.0.1:8001)")
    return 0


def run_install(args: argparse.Namespace) -> int:
    from services.inference.triton_server import TritonServerError, install

    try:
        home = install(args.home, args.wheel)
    except TritonServerError as err:
        print(f"linewatch triton install: error: {err}", file=sys.stderr)
        return 1
    print(f"tritonserver installed in {home}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from services.inference.triton_server import LocalTriton, TritonServerError

    if not args.repo.is_dir():
        print(f"linewatch triton serve: error: no model repository at {args.repo}", file=sys.stderr)
        return 2
    server = LocalTriton(args.repo, args.log, args.home, grpc_port=args.grpc_port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        server.start()
    except TritonServerError as err:
        print(f"linewatch triton serve: error: {err}", file=sys.stderr)
        return 1
    print(f"tritonserver ready: inference: {server.grpc_url} (log: {args.log}; Ctrl-C stops it)", flush=True)
    try:
        while not stop.is_set() and server.process is not None and server.process.poll() is None:
            stop.wait(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
