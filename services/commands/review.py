"""``linewatch review``: fill the review queue from the stored inspections, list it, show a frame's
label and history, and record a person's decision."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import ValidationError

from schemas.inspection import Inspection
from schemas.label import Label, Review
from services.config import LinewatchSettings, load_settings, parse_time
from services.review.autolabel import mask_of_png, store_mask
from services.review.labeller import LabelRun, label_inspections
from services.review.queue import ReviewPolicy, ReviewSelector
from services.storage.errors import LabelConflict, LabelNotFound
from services.storage.label_query import LabelQuery
from services.storage.ports import LabelStore, RecordStore
from services.storage.query import InspectionQuery
from services.storage.stores import open_blob_store, open_label_store, open_record_store

PAGE = 1000  # inspections read per query
DEFAULT_SINCE_H = 24.0


def add_commands(sub: argparse._SubParsersAction) -> None:
    review = sub.add_parser("review", help="the review queue: auto-labels, uncertain frames, decisions")
    actions = review.add_subparsers(dest="action", required=True)

    sync = actions.add_parser(
        "sync", help="auto-label stored inspections (NG, REVIEW) and queue the uncertain ones for review"
    )
    _add_stores(sync, records=True, blobs=True)
    sync.add_argument("--from", dest="since", metavar="TIME", help="captured at or after (default: 24 h ago)")
    sync.add_argument("--to", dest="until", metavar="TIME", help="captured before (default: now)")
    sync.add_argument("--budget", type=int, help="frames queued per line and day at most (default 200)")
    sync.add_argument("--near-band", type=float, help="queue scores this close to the NG threshold (0.1)")
    sync.add_argument("--follow", action="store_true", help="keep labelling new inspections until stopped")
    sync.add_argument("--interval", type=float, default=10.0, help="seconds between passes with --follow")
    sync.set_defaults(handler=run_sync)

    listing = actions.add_parser("list", help="the review queue (highest priority first), or other labels")
    _add_stores(listing)
    listing.add_argument("--status", choices=("queued", "auto", "reviewed"), default="queued")
    listing.add_argument("--line", dest="line_id")
    listing.add_argument("--camera", dest="camera_id")
    listing.add_argument("--recipe")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--json", action="store_true", help="print the labels as JSON lines")
    listing.set_defaults(handler=run_list)

    show = actions.add_parser("show", help="one frame's label and the history of its changes")
    _add_stores(show)
    show.add_argument("frame_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=run_show)

    decide = actions.add_parser("decide", help="record a person's decision on a frame")
    _add_stores(decide, blobs=True)
    decide.add_argument("frame_id")
    decide.add_argument(
        "--decision",
        choices=("defect", "good"),
        required=True,
        help="good: reject the verdict as a false alarm",
    )
    decide.add_argument("--reviewer", required=True, help="who decides (kept in the label's history)")
    decide.add_argument("--class", dest="defect_class", help="the defect's class (with --decision defect)")
    decide.add_argument("--mask", type=Path, help="a corrected mask: a grayscale PNG, white = defect")
    decide.add_argument("--note")
    decide.add_argument("--revision", type=int, help="refuse if the label changed since this revision")
    decide.set_defaults(handler=run_decide)


def _add_stores(parser: argparse.ArgumentParser, records: bool = False, blobs: bool = False) -> None:
    parser.add_argument(
        "--labels", metavar="URL", help="label store URL (default: stores.labels of --config)"
    )
    if records:
        parser.add_argument("--records", metavar="URL", help="record store URL (default: stores.records)")
    if blobs:
        parser.add_argument("--blobs", metavar="URL", help="blob store URL (default: stores.blobs)")
    parser.add_argument("--config", type=Path, help="settings file (default: linewatch.yaml when present)")


def _settings(args: argparse.Namespace) -> LinewatchSettings:
    if args.config is not None:
        return load_settings(args.config)
    default = Path("linewatch.yaml")
    return load_settings(default) if default.is_file() else LinewatchSettings()


def _time(text: str | None, flag: str) -> datetime | None:
    try:
        return parse_time(text, flag)
    except ValueError as err:
        raise SystemExit(f"linewatch review: error: {err}") from None


def _fail(message: str) -> int:
    print(f"linewatch review: error: {message}", file=sys.stderr)
    return 2


def run_sync(args: argparse.Namespace) -> int:
    settings = _settings(args)
    chosen = settings.review
    try:
        policy = ReviewPolicy(
            budget_per_day=args.budget if args.budget is not None else chosen.budget_per_day,
            near_band=args.near_band if args.near_band is not None else chosen.near_band,
            rare_below=chosen.rare_below,
            latency_factor=chosen.latency_factor,
        )
    except ValueError as error:
        return _fail(str(error))
    since = _time(args.since, "--from") or datetime.now(UTC) - timedelta(hours=DEFAULT_SINCE_H)
    until = _time(args.until, "--to")
    if until is not None and until <= since:
        return _fail("--to must be after --from")
    records = open_record_store(args.records or settings.stores.records)
    blobs = open_blob_store(args.blobs or settings.stores.blobs)
    labels = open_label_store(args.labels or settings.stores.labels)
    selector = ReviewSelector(policy)
    total = LabelRun()
    try:
        while True:
            end = until or datetime.now(UTC)
            run = LabelRun()
            for page in _pages(records, since, end):
                run.add(label_inspections(page, labels, blobs, selector, datetime.now(UTC)))
            total.add(run)
            _print_run(run, since, end)
            if not args.follow or until is not None:
                break
            since = end - timedelta(minutes=5)  # late arrivals: labelling twice is harmless
            time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    finally:
        labels.close()
        blobs.close()
        records.close()
    return 0


def _pages(records: RecordStore, since: datetime, until: datetime) -> Iterator[list[Inspection]]:
    offset = 0
    while True:
        query = InspectionQuery(captured_from=since, captured_to=until, limit=PAGE, offset=offset)
        page = records.query_inspections(query)
        if not page:
            return
        yield page
        offset += len(page)


def _print_run(run: LabelRun, since: datetime, until: datetime) -> None:
    print(
        f"{run.seen} inspections captured {since:%Y-%m-%d %H:%M:%S} .. {until:%Y-%m-%d %H:%M:%S} UTC: "
        f"{run.labelled} labelled, {run.queued} queued for review, {run.already} labelled before"
        + (f", {run.over_budget} left out (the day's review budget is spent)" if run.over_budget else "")
    )


def run_list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        return _fail("--limit must be at least 1")
    settings = _settings(args)
    query = LabelQuery(
        status=args.status,
        line_id=args.line_id,
        camera_id=args.camera_id,
        recipe=args.recipe,
        order="priority" if args.status == "queued" else "newest",
        limit=args.limit,
    )
    with _labels(args, settings) as labels:
        found = labels.query_labels(query)
        total = labels.count_labels(query)
    if args.json:
        for label in found:
            print(label.model_dump_json())
        return 0
    print(f"{total} labels {args.status}" + (f", the first {len(found)}:" if total > len(found) else ":"))
    for label in found:
        print(_line(label))
    return 0


def _line(label: Label) -> str:
    decided = f" -> {label.review.decision} by {label.review.reviewer}" if label.review is not None else ""
    reasons = f"  [{', '.join(label.reasons)}]" if label.reasons else ""
    return (
        f"{label.frame_id}  {label.captured_at:%Y-%m-%d %H:%M:%S}  {label.line_id}/{label.camera_id}  "
        f"{label.verdict:<6} score {label.score:.3f}  priority {label.priority:.2f}{decided}{reasons}"
    )


def run_show(args: argparse.Namespace) -> int:
    with _labels(args, _settings(args)) as labels:
        label = labels.get_label(args.frame_id)
        events = labels.history(args.frame_id)
    if label is None:
        return _fail(f"frame {args.frame_id} has no label")
    if args.json:
        print(
            json.dumps(
                {
                    "label": label.model_dump(mode="json"),
                    "history": [e.model_dump(mode="json") for e in events],
                }
            )
        )
        return 0
    print(_line(label))
    print(
        f"  model {label.model_name} {label.model_version}, {len(label.defects)} defects, "
        f"revision {label.revision}"
    )
    if label.review is not None:
        extra = f", class {label.review.defect_class}" if label.review.defect_class else ""
        print(
            f"  reviewed: {label.review.decision}{extra}"
            + (f" ({label.review.note})" if label.review.note else "")
        )
    for event in events:
        print(
            f"  {event.at:%Y-%m-%d %H:%M:%S}  {event.actor:<16} {event.action:<14} "
            f"{json.dumps(event.changes)}"
        )
    return 0


def run_decide(args: argparse.Namespace) -> int:
    settings = _settings(args)
    mask = None
    if args.mask is not None:
        if args.decision != "defect":
            return _fail("--mask goes with --decision defect")
        try:
            drawn = mask_of_png(args.mask.read_bytes())
        except (OSError, ValueError) as error:
            return _fail(f"--mask {args.mask}: {error}")
        blobs = open_blob_store(args.blobs or settings.stores.blobs)
        try:
            mask = store_mask(blobs, drawn)
        finally:
            blobs.close()
    try:
        decision = Review(
            decision=args.decision,
            defect_class=args.defect_class,
            mask=mask,
            note=args.note,
            reviewer=args.reviewer,
            reviewed_at=datetime.now(UTC),
        )
    except ValidationError as error:
        return _fail(error.errors()[0]["msg"])
    with _labels(args, settings) as labels:
        try:
            label = labels.review(args.frame_id, decision, args.revision)
        except LabelNotFound:
            return _fail(f"frame {args.frame_id} has no label (run `linewatch review sync` first)")
        except LabelConflict as error:
            return _fail(str(error))
    print(
        f"frame {label.frame_id}: {label.review.decision if label.review else ''} (revision {label.revision})"
    )
    return 0


def _labels(args: argparse.Namespace, settings: LinewatchSettings) -> closing[LabelStore]:
    """The label store of the arguments, closed on leaving the ``with`` block."""
    return closing(open_label_store(args.labels or settings.stores.labels))
