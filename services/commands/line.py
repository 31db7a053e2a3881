"""The line's commands: ``linewatch demo``, ``linewatch run`` and ``linewatch schemas``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.vision.backbone import ACTIVATIONS


def add_commands(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo",
        help="train on a synthetic line, run it and serve the dashboard",
        description="Builds a synthetic moulding line, trains a detector on its good parts, runs the line "
        "and serves the dashboard on http://127.0.0.1:PORT until Ctrl-C; prints a summary at the end.",
    )
    demo.add_argument("--parts", type=int, help="parts to run (default: until Ctrl-C)")
    demo.add_argument(
        "--no-serve", dest="serve", action="store_false", help="run the line only, no dashboard"
    )
    demo.add_argument("--workdir", type=Path, default=Path("runs/demo"), help="where data, model, stores go")
    demo.add_argument("--weights", type=Path, help="local state_dict of the backbone (no download)")
    demo.add_argument("--activation", choices=sorted(ACTIVATIONS), help="replace every activation function")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--train-parts", type=int, default=60, help="good parts to train on (at least 8)")
    demo.add_argument("--no-keep-frames", dest="keep_frames", action="store_false", help="delete raw frames")
    demo.add_argument(
        "--distributed",
        action="store_true",
        help="the distributed line on this machine: a local broker (Tansu), producers, Faust workers",
    )
    demo.add_argument("--workers", type=int, default=1, help="Faust workers with --distributed (default 1)")
    demo.add_argument(
        "--fresh",
        action="store_true",
        help="delete an earlier run's records and blobs in the workdir (default: keep them under previous/)",
    )
    demo.set_defaults(handler=run_demo_command)

    run = sub.add_parser("run", help="run the line on the configured sources and models")
    run.add_argument("--config", type=Path, default=Path("linewatch.yaml"), help="YAML settings file")
    run.add_argument("--serve", action="store_true", help="serve the API and dashboard while the line runs")
    run.add_argument("--resume", action="store_true", help="skip frames whose record is already stored")
    run.set_defaults(handler=run_line_command)

    schemas = sub.add_parser("schemas", help="the JSON Schemas of the records")
    schemas_sub = schemas.add_subparsers(dest="schemas_command", required=True)
    export = schemas_sub.add_parser("export", help="write one <Record>.schema.json per record")
    export.add_argument("out_dir", type=Path, nargs="?", help="default: schemas/json in the source tree")
    export.add_argument("--check", action="store_true", help="write nothing; exit 1 if the files are stale")
    export.set_defaults(handler=run_schemas_export)


def _print_summary(lines: list[str]) -> None:
    print("summary")
    for line in lines:
        print(f"  {line}")


def run_demo_command(args: argparse.Namespace) -> int:
    from services.api.server import ApiServerError
    from services.commands.demo import DemoOptions, run_demo
    from services.inference.detector_process import DetectorProcessError

    if args.parts is not None and args.parts < 1:
        print("linewatch demo: error: --parts must be at least 1", file=sys.stderr)
        return 2
    options = DemoOptions(
        workdir=args.workdir,
        parts=args.parts,
        serve=args.serve,
        port=args.port,
        weights=args.weights,
        activation=args.activation,
        seed=args.seed,
        keep_frames=args.keep_frames,
        train_parts=args.train_parts,
        fresh=args.fresh,
    )
    if args.distributed:
        return _run_distributed_demo(options, args.workers)
    try:
        summary = run_demo(options)
    except ApiServerError as err:  # e.g. the port is taken
        print(f"linewatch demo: error: {err}", file=sys.stderr)
        return 2
    except DetectorProcessError as err:
        print(f"linewatch demo: error: {err}", file=sys.stderr)
        return 1
    _print_summary(summary.lines())
    return 0 if summary.stopped_by in (None, "interrupted") else 1


def _run_distributed_demo(options: object, workers: int) -> int:
    from services.api.server import ApiServerError
    from services.commands.demo import DemoOptions
    from services.commands.demo_distributed import run_distributed_demo
    from services.distributed.broker import BrokerError

    assert isinstance(options, DemoOptions)
    if options.parts is None:
        print("linewatch demo: error: --distributed needs --parts N", file=sys.stderr)
        return 2
    if workers < 1:
        print("linewatch demo: error: --workers must be at least 1", file=sys.stderr)
        return 2
    try:
        summary = run_distributed_demo(options, workers)
    except (BrokerError, ApiServerError, RuntimeError) as err:
        print(f"linewatch demo: error: {err}", file=sys.stderr)
        return 1
    _print_summary(summary.lines())
    return 0 if summary.stopped_by in (None, "interrupted") and summary.inspected == summary.published else 1


def run_line_command(args: argparse.Namespace) -> int:
    from services.api.server import ApiServerError
    from services.commands.compose import (
        Api,
        build_api,
        build_line,
        load_local_models,
        open_stores,
        serve_beside,
    )
    from services.config import load_settings
    from services.inference.detector_process import DetectorProcessError
    from services.inference.urls import is_remote
    from services.stream.serving import run_line

    try:
        settings = load_settings(args.config)
        if not settings.frame_sources:
            raise ValueError(f"{args.config} names no frame_sources")
        inspectors = load_local_models(settings)
        stores = open_stores(
            settings.stores.records,
            settings.stores.blobs,
            group_commit=True,
            labels_url=settings.stores.labels,
        )
    except (ValueError, OSError) as err:  # settings, URLs, paths: say what is wrong, no traceback
        print(f"linewatch run: error: {err}", file=sys.stderr)
        return 2
    api: Api | None = None
    try:
        line = build_line(settings, inspectors, stores, resume=args.resume)
        server = None
        if args.serve:
            remote = settings.inference_url() if is_remote(settings.inference_url()) else None
            api = build_api(
                settings.api, stores, inspectors, line, inference_url=remote, registry_url=settings.registry
            )
            server = serve_beside(settings.api, api)
            print(f"dashboard: {server.url}/dashboard/", flush=True)
        summary = run_line(line, server)
        summary.stored_dead_letters = stores.records.count_dead_letters()
    except ValueError as err:  # a source or inference URL
        print(f"linewatch run: error: {err}", file=sys.stderr)
        return 2
    except ApiServerError as err:  # refused settings (no API keys), a port in use
        print(f"linewatch run: error: {err}", file=sys.stderr)
        return 2
    except DetectorProcessError as err:  # a detector process could not start
        print(
            f"linewatch run: error: {err} (inference: local:// runs the detectors as threads)",
            file=sys.stderr,
        )
        return 1
    finally:
        if api is not None:
            api.close()
        stores.close()
    _print_summary(summary.lines())
    return 0 if summary.stopped_by in (None, "interrupted") else 1


def run_schemas_export(args: argparse.Namespace) -> int:
    from schemas.export import DEFAULT_DIR, check_json_schemas, export_json_schemas

    out_dir = args.out_dir or DEFAULT_DIR
    if args.check:
        problems = check_json_schemas(out_dir)
        for problem in problems:
            print(problem)
        if problems:
            print(f"run `linewatch schemas export {out_dir}` to regenerate", file=sys.stderr)
        return 1 if problems else 0
    for path in export_json_schemas(out_dir):
        print(path)
    return 0
