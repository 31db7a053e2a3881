"""``linewatch models``: the model registry: register a trained model, list the versions of a recipe,
promote one to production, roll back, set a shadow model."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from services.config import parse_time, settings_or_defaults
from services.registry.files import FileModelRegistry, open_registry
from services.registry.ports import RecipeStages, RegistryError

if TYPE_CHECKING:
    from services.registry.shadow import ShadowReport


def add_commands(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="the model registry: register, list, promote, roll back, shadow")
    actions = models.add_subparsers(dest="action", required=True)

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--registry", metavar="URL", help="registry URL (default: registry of --config)")
        parser.add_argument(
            "--config", type=Path, help="settings file (default: linewatch.yaml when present)"
        )
        parser.add_argument(
            "--by", default=None, help="who does it (kept in the history; default: the login)"
        )

    register = actions.add_parser("register", help="copy a trained model into the registry as a new version")
    common(register)
    register.add_argument("--model", type=Path, required=True, help="the model directory (linewatch train)")
    register.add_argument("--recipe", required=True)
    register.add_argument("--note")
    register.add_argument(
        "--evaluation", type=Path, help="a `linewatch evaluate --json` result to keep with it"
    )
    register.add_argument("--promote", action="store_true", help="and make it the production model")
    register.set_defaults(handler=run_register)

    listing = actions.add_parser("list", help="the recipes, their versions and which is where")
    common(listing)
    listing.add_argument("--recipe")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=run_list)

    promote = actions.add_parser("promote", help="make a version the recipe's production model")
    common(promote)
    promote.add_argument("--recipe", required=True)
    promote.add_argument("--version", required=True)
    promote.set_defaults(handler=run_promote)

    rollback = actions.add_parser("rollback", help="put back the production model before the current one")
    common(rollback)
    rollback.add_argument("--recipe", required=True)
    rollback.set_defaults(handler=run_rollback)

    shadow = actions.add_parser("shadow", help="set (or, with --off, clear) the recipe's shadow model")
    common(shadow)
    shadow.add_argument("--recipe", required=True)
    group = shadow.add_mutually_exclusive_group(required=True)
    group.add_argument("--version")
    group.add_argument("--off", action="store_true")
    shadow.set_defaults(handler=run_shadow)

    canary = actions.add_parser("canary", help="let a version take a share of the recipe's frames (or --off)")
    common(canary)
    canary.add_argument("--recipe", required=True)
    which = canary.add_mutually_exclusive_group(required=True)
    which.add_argument("--version")
    which.add_argument("--off", action="store_true")
    canary.add_argument("--share", type=float, default=0.1, help="share of the recipe's frames (0.1)")
    canary.set_defaults(handler=run_canary)

    compare = actions.add_parser(
        "compare",
        help="shadow evaluation: a candidate scores the frames production inspected",
    )
    common(compare)
    compare.add_argument("--recipe", required=True)
    compare.add_argument("--version", help="the candidate (default: the recipe's shadow model)")
    compare.add_argument("--records", metavar="URL", help="record store URL (default: stores.records)")
    compare.add_argument("--blobs", metavar="URL", help="blob store URL (default: stores.blobs)")
    compare.add_argument(
        "--labels", metavar="URL", help="label store URL, for review outcomes (stores.labels)"
    )
    compare.add_argument("--from", dest="since", metavar="TIME", help="captured at or after (ISO 8601)")
    compare.add_argument("--to", dest="until", metavar="TIME", help="captured before (ISO 8601)")
    compare.add_argument("--limit", type=int, default=2000, help="the newest frames at most (2000)")
    compare.add_argument(
        "--live",
        action="store_true",
        help="report on what the live shadow wrote (a line following the registry)",
    )
    compare.add_argument("--json", action="store_true", help="print the report as JSON")
    compare.set_defaults(handler=run_compare)

    retrain = sub.add_parser(
        "retrain",
        help="retrain a recipe's production model with the frames reviewers confirmed, when a rule says so",
        description="Rules: --false-alarms N confirmed false alarms, --max-miss-rate M (the card's estimate),"
        " a drift alert since the model was made. The new model learns from its training images plus the"
        " frames confirmed good; the frames confirmed defective set its operating curve (3 at least). It is"
        " registered as a new version (promoted only with --promote).",
    )
    common(retrain)
    retrain.add_argument("--recipe", required=True)
    retrain.add_argument(
        "--out", type=Path, required=True, help="a new folder for the training set and model"
    )
    retrain.add_argument("--data", type=Path, help="the training data root (default: the model card's)")
    retrain.add_argument("--labels", metavar="URL", help="label store URL (default: stores.labels)")
    retrain.add_argument("--blobs", metavar="URL", help="blob store URL (default: stores.blobs)")
    retrain.add_argument(
        "--records", metavar="URL", help="record store URL, for drift alerts (stores.records)"
    )
    retrain.add_argument("--weights", type=Path, help="the backbone's weights (as given to linewatch train)")
    retrain.add_argument("--false-alarms", type=int, default=20)
    retrain.add_argument("--max-miss-rate", type=float, default=0.10)
    retrain.add_argument("--no-drift", action="store_true", help="drift alerts do not call for retraining")
    retrain.add_argument("--check", action="store_true", help="say whether retraining is due, do nothing")
    retrain.add_argument("--force", action="store_true", help="retrain even when no rule calls for it")
    retrain.add_argument("--promote", action="store_true", help="make the new version the production model")
    retrain.add_argument(
        "--watch",
        type=float,
        metavar="SECONDS",
        help="check the rules every SECONDS and retrain when one fires, into --out/<time>/ (until stopped);"
        " a version waiting for a person's promotion is not retrained again",
    )
    retrain.add_argument("--rounds", type=int, help="with --watch: stop after this many checks")
    retrain.set_defaults(handler=run_retrain)


def _registry(args: argparse.Namespace) -> FileModelRegistry:
    url = args.registry
    if url is None:
        url = settings_or_defaults(args.config).registry
    if url is None:
        raise RegistryError("no registry: give --registry file:///path or set registry in linewatch.yaml")
    return open_registry(url)


def _actor(args: argparse.Namespace) -> str:
    if args.by:
        return str(args.by)
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _fail(error: Exception) -> int:
    print(f"linewatch models: error: {error}", file=sys.stderr)
    return 2


def _print_stages(stages: RecipeStages) -> None:
    canary = (
        f", canary {stages.canary} at {stages.canary_share:.0%}"
        if stages.canary and stages.canary_share
        else ""
    )
    print(f"{stages.recipe}: production {stages.production or '–'}, shadow {stages.shadow or '–'}{canary}")


def run_register(args: argparse.Namespace) -> int:
    try:
        evaluation = json.loads(args.evaluation.read_text()) if args.evaluation is not None else None
        registry = _registry(args)
        entry = registry.register(args.model, args.recipe, _actor(args), args.note, evaluation)
        print(f"registered {entry.recipe} {entry.version} ({entry.kind}) from {entry.source}")
        if args.promote:
            _print_stages(registry.promote(args.recipe, entry.version, _actor(args)))
    except (RegistryError, ValueError, OSError) as error:
        return _fail(error)
    return 0


def run_list(args: argparse.Namespace) -> int:
    try:
        registry = _registry(args)
        recipes = [args.recipe] if args.recipe else registry.recipes()
        listing = {recipe: (registry.stages(recipe), registry.versions(recipe)) for recipe in recipes}
    except (RegistryError, ValueError) as error:
        return _fail(error)
    if args.json:
        print(
            json.dumps(
                {
                    recipe: {
                        "stages": stages.model_dump(mode="json"),
                        "versions": [v.model_dump(mode="json") for v in versions],
                    }
                    for recipe, (stages, versions) in listing.items()
                }
            )
        )
        return 0
    for stages, versions in listing.values():
        _print_stages(stages)
        for entry in versions:
            where = " (production)" if entry.version == stages.production else ""
            where += " (shadow)" if entry.version == stages.shadow else ""
            where += " (canary)" if entry.version == stages.canary else ""
            misses = entry.estimates.get("miss_rate")
            estimate = f", est. miss {misses:.1%}" if misses is not None else ""
            print(
                f"  {entry.version}  {entry.kind:<9} {entry.registered_at:%Y-%m-%d %H:%M}"
                f" by {entry.registered_by}{estimate}{where}" + (f"  {entry.note}" if entry.note else "")
            )
    return 0


def run_promote(args: argparse.Namespace) -> int:
    try:
        _print_stages(_registry(args).promote(args.recipe, args.version, _actor(args)))
    except (RegistryError, ValueError) as error:
        return _fail(error)
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    try:
        _print_stages(_registry(args).rollback(args.recipe, _actor(args)))
    except (RegistryError, ValueError) as error:
        return _fail(error)
    return 0


def run_shadow(args: argparse.Namespace) -> int:
    try:
        _print_stages(
            _registry(args).set_shadow(args.recipe, None if args.off else args.version, _actor(args))
        )
    except (RegistryError, ValueError) as error:
        return _fail(error)
    return 0


def run_retrain(args: argparse.Namespace) -> int:
    """One pass, or with ``--watch`` a pass every so many seconds: the rules are the trigger."""
    if args.watch is None:
        code, _ = _retrain_once(args, args.out)
        return code
    if args.watch <= 0:
        return _fail(ValueError("--watch takes the seconds between passes, more than 0"))
    waiting_on: tuple[str | None, str] | None = None  # (production, candidate) a person has to decide on
    rounds = 0
    try:
        while args.rounds is None or rounds < args.rounds:
            rounds += 1
            production = _registry(args).stages(args.recipe).production
            if waiting_on is not None and waiting_on[0] == production:
                print(f"{args.recipe}: {waiting_on[1]} waits for a person's decision; not retraining again")
            else:
                out = args.out / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
                code, registered = _retrain_once(args, out)
                if code != 0:
                    return code
                if registered is not None and not args.promote:
                    waiting_on = (production, registered)
            if args.rounds is None or rounds < args.rounds:
                time.sleep(args.watch)
    except KeyboardInterrupt:
        pass
    except (RegistryError, ValueError) as error:
        return _fail(error)
    return 0


def _retrain_once(args: argparse.Namespace, out_dir: Path) -> tuple[int, str | None]:
    """The rules checked once and, when one fires (or with --force), a new version trained into
    ``out_dir`` and registered: (exit code, the registered version or None)."""
    from services.review.retrain import RetrainRules, build_training_set, reasons_to_retrain, retrain_config
    from services.storage.stores import open_blob_store, open_label_store, open_record_store
    from services.vision import evaluate
    from services.vision.artifact import write_card
    from services.vision.inspector import Inspector
    from services.vision.train import train

    settings = settings_or_defaults(args.config)
    try:
        registry = _registry(args)
        production = registry.stages(args.recipe).production
        if production is None:
            raise RegistryError(f"{args.recipe} has no production model in the registry")
        current = Inspector.load(registry.model_dir(args.recipe, production)).card
    except (RegistryError, ValueError) as error:
        return _fail(error), None
    rules = RetrainRules(args.false_alarms, args.max_miss_rate, not args.no_drift)
    labels = open_label_store(args.labels or settings.stores.labels)
    records = open_record_store(args.records or settings.stores.records)
    try:
        reasons = reasons_to_retrain(rules, current, args.recipe, labels, records)
        print(
            f"{args.recipe} {production}: "
            + ("; ".join(reasons) if reasons else "no rule calls for retraining")
        )
        if args.check or not (reasons or args.force):
            return 0, None
        if out_dir.exists():
            return _fail(ValueError(f"--out {out_dir} exists: give a new folder")), None
        blobs = open_blob_store(args.blobs or settings.stores.blobs)
        try:
            data = build_training_set(
                args.data or Path(current.training.data_root),
                current.training.category,
                args.recipe,
                labels,
                blobs,
                out_dir / "data",
            )
        finally:
            blobs.close()
        print(
            f"training set: {data.base_images} images of the last training,"
            f" {data.confirmed_good} confirmed good, {data.confirmed_defects} confirmed defective"
            + (f", {data.missing_images} reviewed frames without their image" if data.missing_images else "")
        )
        model_dir = out_dir / "model"
        card = train(retrain_config(current, data, model_dir, args.weights, progress=True))
        if data.confirmed_defects >= evaluate.MIN_REAL_DEFECTS:
            scores, _ = evaluate.real_defect_scores(Inspector.load(model_dir), data.defects_dir)
            card = evaluate.with_real_defects(card, scores, "confirmed by reviewers")
            write_card(card, model_dir)
        note = "retrained: " + ("; ".join(reasons) if reasons else "forced")
        entry = registry.register(model_dir, args.recipe, _actor(args), note)
        print(f"registered {entry.recipe} {entry.version} ({note})")
        if args.promote:
            _print_stages(registry.promote(args.recipe, entry.version, _actor(args)))
    except (RegistryError, ValueError, OSError) as error:
        return _fail(error), None
    finally:
        labels.close()
        records.close()
    return 0, entry.version


def run_canary(args: argparse.Namespace) -> int:
    try:
        registry = _registry(args)
        if args.off:
            stages = registry.set_canary(args.recipe, None, None, _actor(args))
        else:
            stages = registry.set_canary(args.recipe, args.version, args.share, _actor(args))
        _print_stages(stages)
    except (RegistryError, ValueError) as error:
        return _fail(error)
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from services.registry.shadow import compare, save_shadow, shadow_score, stored_inspections
    from services.storage.stores import open_blob_store, open_label_store, open_record_store
    from services.vision.inspector import Inspector

    settings = settings_or_defaults(args.config)
    try:
        if args.limit < 1:
            raise ValueError("--limit must be at least 1")
        since, until = parse_time(args.since, "--from"), parse_time(args.until, "--to")
        registry = _registry(args)
        version = args.version or registry.stages(args.recipe).shadow
        if version is None:
            raise RegistryError(
                f"{args.recipe} has no shadow model: give --version or set one (models shadow)"
            )
        candidate = Inspector.load(registry.model_dir(args.recipe, version))
    except (RegistryError, ValueError) as error:
        return _fail(error)
    folder = registry.entry_dir(args.recipe, version)
    if args.live:
        from services.registry.live_shadow import LIVE_FILE
        from services.registry.shadow import live_verdicts

        labels = open_label_store(args.labels or settings.stores.labels)
        try:
            verdicts = live_verdicts(folder / LIVE_FILE, labels)
        finally:
            labels.close()
        if not verdicts:
            return _fail(RegistryError(f"no live shadow verdicts of {version} yet ({folder / LIVE_FILE})"))
        report = compare(args.recipe, version, verdicts, 0)
        saved = folder / LIVE_FILE
        return _print_report(args, report, saved)
    records = open_record_store(args.records or settings.stores.records)
    blobs = open_blob_store(args.blobs or settings.stores.blobs)
    labels = open_label_store(args.labels or settings.stores.labels)
    try:
        frames = stored_inspections(records, args.recipe, since, until, args.limit)
        verdicts, skipped = shadow_score(candidate, frames, blobs, labels)
        report = compare(args.recipe, version, verdicts, skipped)
        saved = save_shadow(folder, verdicts, report)
    finally:
        labels.close()
        blobs.close()
        records.close()
    return _print_report(args, report, saved)


def _print_report(args: argparse.Namespace, report: ShadowReport, saved: Path) -> int:
    version = report.candidate
    if args.json:
        print(json.dumps(report.as_json()))
        return 0
    print(
        f"{args.recipe}: candidate {version} on {report.frames} frames production inspected"
        + (f" ({report.skipped} without their image)" if report.skipped else "")
    )
    print(
        f"  agreement {report.agreement:.1%};"
        f" production verdict -> candidate verdict: {json.dumps(report.table)}"
    )
    print(f"  normalised scores, production {report.production_scores}, candidate {report.candidate_scores}")
    if report.reviewed:
        for model, counts in report.outcomes.items():
            print(
                f"  {model}: {counts['false_alarms']} false alarms on {counts['reviewed_good']}"
                " frames confirmed good,"
                f" {counts['misses']} misses on {counts['reviewed_defect']} confirmed defective"
            )
    else:
        print("  no reviewed frames among them: agreement and scores only")
    print(f"  verdicts and report kept in {saved} (the records are unchanged)")
    return 0
