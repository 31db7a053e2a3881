"""``linewatch models``: the model registry: register a trained model, list the versions of a recipe,
promote one to production, roll back, set a shadow model."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

from services.config import LinewatchSettings, load_settings
from services.registry.files import FileModelRegistry, open_registry
from services.registry.ports import RecipeStages, RegistryError


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


def _registry(args: argparse.Namespace) -> FileModelRegistry:
    url = args.registry
    if url is None:
        config = args.config if args.config is not None else Path("linewatch.yaml")
        settings = load_settings(config) if config.is_file() else LinewatchSettings()
        url = settings.registry
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
    print(f"{stages.recipe}: production {stages.production or '–'}, shadow {stages.shadow or '–'}")


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
