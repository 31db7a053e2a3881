"""The engine's commands: ``linewatch train``, ``evaluate``, ``predict`` and ``synth``."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.vision.backbone import ACTIVATIONS

if TYPE_CHECKING:
    from services.vision.artifact import ModelCard


def position_weight(text: str) -> float | str:
    """``--position-weight``: ``auto`` or a share from 0 to 1."""
    if text == "auto":
        return text
    try:
        weight = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= weight <= 1.0:
        raise argparse.ArgumentTypeError(f"the position weight is a share from 0 to 1, got {weight}")
    return weight


def add_commands(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="fit a detector on good images and calibrate it")
    train.add_argument("--data", type=Path, required=True, help="dataset root (MVTec layout)")
    train.add_argument("--category", required=True)
    train.add_argument("--out", type=Path, required=True, help="model directory to write")
    train.add_argument(
        "--detector", choices=["patchcore", "spade", "destseg", "diffusion", "ensemble"], default="patchcore"
    )
    train.add_argument(
        "--members",
        nargs="+",
        metavar="MEMBER",
        help="ensemble: trained model folders, or detector names to train now (e.g. patchcore destseg);"
        " the first is the pre-screen",
    )
    train.add_argument(
        "--map-weights",
        type=float,
        nargs="+",
        help="ensemble: each member's weight in the map (default equal)",
    )
    train.add_argument(
        "--image-weights",
        type=float,
        nargs="+",
        help="ensemble: each member's weight in the image score (default: the first member's alone)",
    )
    train.add_argument(
        "--fusion",
        choices=["geometric", "mean"],
        default="geometric",
        help="ensemble: fuse calibrated log-scores (geometric, default) or normalised scores (mean)",
    )
    train.add_argument(
        "--pass-share",
        type=float,
        help="ensemble: share of good frames the first member passes on to the others (the cascade;"
        " default 1 = every frame)",
    )
    train.add_argument("--backbone", default="mobilenet_v2", help="any torchvision classification model")
    train.add_argument("--weights", type=Path, help="local state_dict of the backbone (air-gapped plants)")
    train.add_argument("--activation", choices=sorted(ACTIVATIONS), help="replace every activation function")
    train.add_argument("--layers", nargs="+", help="feature layers (default: per backbone)")
    train.add_argument(
        "--layer-weights",
        type=float,
        nargs="+",
        help="scale of each layer's features (PatchCore; default 1 each)",
    )
    train.add_argument("--image-size", type=int, default=256)
    train.add_argument("--coreset", type=float, default=0.02, help="share of patches kept (PatchCore)")
    train.add_argument(
        "--position-weight",
        type=position_weight,
        default="auto",
        help="PatchCore: share of a per-position Gaussian (PaDiM-style) score in map and image score;"
        " 0 = off (plain PatchCore); auto (default) = chosen on the held-out good images and synthetic"
        " defects painted on them, 0 when fewer than 20 are held out (see README)",
    )
    train.add_argument(
        "--holdout", type=float, default=0.15, help="share of good images held out to calibrate"
    )
    train.add_argument(
        "--holdout-unseen",
        action="store_true",
        help="PatchCore: keep the held-out images out of the per-position statistics after calibrating"
        " (for a model that will join an ensemble, which calibrates on the same images)",
    )
    train.add_argument(
        "--target-fpr", type=float, default=0.01, help="false-alarm rate the threshold aims at"
    )
    train.add_argument(
        "--folds",
        type=int,
        default=5,
        help="PatchCore: score every good image out of sample in this many folds and calibrate on all"
        " of them (default 5); 0 holds --holdout of them out instead",
    )
    train.add_argument(
        "--review-fpr",
        type=float,
        default=0.10,
        help="the REVIEW band below the NG threshold: at most this share of good parts reach REVIEW or"
        " NG (default 0.10); 0 = no band, OK/NG only",
    )
    train.add_argument("--roi", type=int, nargs=4, metavar=("X", "Y", "W", "H"), help="inspect only this box")
    train.add_argument(
        "--device",
        default="auto",
        help="DeSTSeg and diffusion: cpu, cuda or auto (a CUDA GPU when there is one)",
    )
    train.add_argument(
        "--autoencoder",
        type=Path,
        nargs=2,
        metavar=("ENCODER", "DECODER"),
        help="diffusion: the tiny autoencoder's weights (TAESD-style state_dicts) for the latent space",
    )
    train.add_argument(
        "--space",
        choices=["latent", "pixel"],
        default="latent",
        help="diffusion: denoise in the autoencoder's latent space (default) or in pixels at 64 px",
    )
    train.add_argument(
        "--diffusion-steps",
        type=int,
        help="diffusion: denoiser training steps (default 2000; an adapter's: 300)",
    )
    train.add_argument(
        "--head-steps",
        type=int,
        help="diffusion: steps of the segmentation head trained on synthetic defects over the"
        " discrepancy (default 400; 0 = none, the map is the scaled discrepancy itself)",
    )
    train.add_argument(
        "--base",
        type=Path,
        metavar="MODEL",
        help="diffusion: adapt this trained diffusion model to the category with a LoRA adapter"
        " (its denoiser frozen and shared; minutes instead of a new model)",
    )
    train.add_argument("--lora-rank", type=int, default=8, help="diffusion --base: the adapter's rank")
    train.add_argument("--student-steps", type=int, help="DeSTSeg: stage-1 steps (default 1500)")
    train.add_argument("--segmentation-steps", type=int, help="DeSTSeg: stage-2 steps (default 700)")
    train.add_argument(
        "--textures", type=Path, help="DeSTSeg: a folder of texture images its synthetic defects also use"
    )
    train.add_argument(
        "--foreground",
        choices=["auto", "otsu", "whole"],
        default="auto",
        help="DeSTSeg: where synthetic defects may go (default auto: the part when Otsu finds one)",
    )
    train.add_argument(
        "--generated",
        type=Path,
        metavar="DIR",
        help="DeSTSeg: a synthetic set (OUT/CAT of linewatch synth, e.g. --method diffusion --split train)"
        " whose defects the segmentation stage mixes in; images drawn on held-out goods are left out",
    )
    train.add_argument(
        "--generated-share",
        type=float,
        default=0.5,
        help="DeSTSeg --generated: the share of the segmentation stage's defects taken from it (%(default)s)",
    )
    train.add_argument(
        "--student-from",
        type=Path,
        metavar="MODEL",
        help="DeSTSeg: reuse this trained DeSTSeg's student and train only the segmentation head",
    )
    train.add_argument("--threads", type=int, help="torch CPU threads")
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(handler=run_train)

    calibrate = sub.add_parser(
        "calibrate",
        help="re-set a model's NG threshold or REVIEW band from its card's scores, without retraining",
        description="Reads the scores the card keeps (good images scored out of sample, synthetic"
        " defects on them) and moves the thresholds: --target-fpr re-sets the NG threshold,"
        " --review-fpr or --max-miss-rate the REVIEW band's lower edge. Prints the new estimates.",
    )
    calibrate.add_argument("--model", type=Path, required=True)
    calibrate.add_argument("--target-fpr", type=float, help="the NG threshold's false-alarm rate")
    band = calibrate.add_mutually_exclusive_group()
    band.add_argument(
        "--review-fpr", type=float, help="at most this share of good parts reach REVIEW or NG (0: no band)"
    )
    band.add_argument(
        "--max-miss-rate",
        type=float,
        help="lower the REVIEW band until at most this share of (synthetic) defects is called OK",
    )
    calibrate.add_argument(
        "--defects",
        type=Path,
        metavar="DIR",
        help="images of real defective parts (any folders below DIR but 'good'; *_mask files left out): their"
        " scores replace the synthetic defects' on the card, so estimates and --max-miss-rate rest on them",
    )
    calibrate.add_argument(
        "--camera",
        help="set this camera's own thresholds from its recent good frames (OK frames no reviewer called"
        " defective, NG/REVIEW frames confirmed good) instead of the model's; --off removes them",
    )
    calibrate.add_argument(
        "--records", metavar="URL", help="with --camera: the record store (stores.records)"
    )
    calibrate.add_argument("--labels", metavar="URL", help="with --camera: the label store (stores.labels)")
    calibrate.add_argument(
        "--since", metavar="TIME", help="with --camera: frames captured since (default 7 days)"
    )
    calibrate.add_argument("--off", action="store_true", help="with --camera: back to the model's thresholds")
    calibrate.add_argument("--dry-run", action="store_true", help="print the estimates, change nothing")
    calibrate.set_defaults(handler=run_calibrate)

    evaluate = sub.add_parser("evaluate", help="score a trained model on a labelled test set")
    evaluate.add_argument("--model", type=Path, required=True)
    evaluate.add_argument("--data", type=Path, required=True)
    evaluate.add_argument("--category", required=True)
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--threads", type=int)
    evaluate.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    evaluate.set_defaults(handler=run_evaluate)

    predict = sub.add_parser(
        "predict",
        help="inspect image files: JSON results and heat-map overlays",
        description="Writes OUT/NAME.json and OUT/NAME_overlay.png per image. NAME is the file's stem, "
        "with as many of its folders in front as it takes to keep images of the same name apart "
        "(good/000.png and broken_large/000.png: good-000, broken_large-000).",
    )
    predict.add_argument("--model", type=Path, required=True)
    predict.add_argument("images", type=Path, nargs="+")
    predict.add_argument(
        "--out", type=Path, default=Path("predictions"), help="folder for results (default ./predictions)"
    )
    predict.add_argument("--batch-size", type=int, default=8)
    predict.add_argument("--threads", type=int)
    predict.set_defaults(handler=run_predict)

    synth = sub.add_parser(
        "synth",
        help="write a test set of synthetic defects on good images (MVTec layout)",
        description="Draws synthetic defects on a category's good images and writes OUT/CAT/test/synthetic,"
        " OUT/CAT/ground_truth/synthetic/*_mask.png, copies of the goods in OUT/CAT/test/good and a"
        " synthetic.json manifest; linewatch evaluate --data OUT --category CAT reads it.",
    )
    synth.add_argument("--data", type=Path, required=True, help="dataset root (MVTec layout)")
    synth.add_argument("--category", required=True)
    synth.add_argument("--out", type=Path, required=True, help="root of the set to write")
    synth.add_argument(
        "--method",
        choices=["perlin", "paint", "diffusion"],
        default="perlin",
        help="perlin (default), paint, or diffusion: defects generated from a few real ones (needs --model)",
    )
    synth.add_argument(
        "--model",
        type=Path,
        help="diffusion: the category's diffusion model (linewatch train --detector diffusion)",
    )
    synth.add_argument(
        "--seed-defects",
        type=int,
        default=10,
        help="diffusion: real defective test images (with masks) to learn from, at most 10 (%(default)s)",
    )
    synth.add_argument(
        "--adapter-steps",
        type=int,
        default=150,
        help="diffusion: LoRA steps adapting the model to the seed defects; 0 = none (%(default)s)",
    )
    synth.add_argument(
        "--device", default="cpu", help="diffusion: where the adapter trains (cpu, cuda, auto)"
    )
    synth.add_argument("--n", type=int, default=100, help="synthetic images (%(default)s)")
    synth.add_argument(
        "--split", choices=["test", "train"], default="test", help="whose good images (%(default)s)"
    )
    synth.add_argument(
        "--sources",
        nargs="+",
        choices=["procedural", "self", "folder"],
        default=["procedural", "self"],
        help="Perlin: texture sources (folder joins when --textures is given)",
    )
    synth.add_argument("--textures", type=Path, help="a folder of texture images (DTD-style)")
    synth.add_argument(
        "--foreground",
        choices=["auto", "otsu", "whole"],
        default="auto",
        help="where defects may go: the part found by Otsu, the whole image, or auto (%(default)s)",
    )
    synth.add_argument("--size", type=int, help="resize the goods to SIZE x SIZE first (default: as is)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--no-goods", action="store_true", help="do not copy the good images")
    synth.add_argument("--overwrite", action="store_true", help="replace a synthetic set already there")
    synth.set_defaults(handler=run_synth)


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def run_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from services.vision.destseg import DestsegParams, TrainingDiverged
    from services.vision.diffusion.model import DiffusionParams
    from services.vision.synthesis import SynthesisSettings
    from services.vision.train import TrainConfig, train

    _set_threads(args.threads)
    if args.detector not in ("destseg", "ensemble") and (
        args.student_steps or args.segmentation_steps or args.textures
    ):
        print("linewatch train: error: --*-steps and --textures are DeSTSeg settings", file=sys.stderr)
        return 2
    if args.detector != "destseg" and (args.generated or args.student_from):
        print("linewatch train: error: --generated and --student-from are DeSTSeg settings", file=sys.stderr)
        return 2
    if not 0 <= args.generated_share <= 1:
        print("linewatch train: error: --generated-share is a share between 0 and 1", file=sys.stderr)
        return 2
    if args.base is not None and args.detector != "diffusion":
        print("linewatch train: error: --base (a LoRA adapter) is a diffusion setting", file=sys.stderr)
        return 2
    if args.detector not in ("diffusion", "ensemble") and (
        args.autoencoder or args.diffusion_steps or args.head_steps is not None
    ):
        print(
            "linewatch train: error: --autoencoder, --diffusion-steps, --head-steps are diffusion settings",
            file=sys.stderr,
        )
        return 2
    ensemble_flags = args.members or args.map_weights or args.image_weights or args.pass_share is not None
    if args.detector != "ensemble" and (ensemble_flags or args.fusion != "geometric"):
        print(
            "linewatch train: error: --members, --*-weights, --fusion and --pass-share are ensemble settings",
            file=sys.stderr,
        )
        return 2
    if args.detector == "ensemble" and not args.members:
        print("linewatch train: error: an ensemble needs --members (at least two)", file=sys.stderr)
        return 2
    if args.detector not in ("destseg", "diffusion", "ensemble") and args.device != "auto":
        print("linewatch train: error: --device is a DeSTSeg and diffusion setting", file=sys.stderr)
        return 2
    diffusion_member = args.detector == "diffusion" or "diffusion" in (args.members or [])
    if diffusion_member and args.space == "latent" and not args.autoencoder and args.base is None:
        print(
            "linewatch train: error: the latent space needs --autoencoder ENCODER DECODER (or --space pixel)",
            file=sys.stderr,
        )
        return 2
    diffusion = DiffusionParams(space=args.space)
    if args.base is not None:  # an adapter: a short run at a higher rate (the base stays frozen)
        diffusion = replace(diffusion, steps=300, lr=1e-3, eval_every=50)
    if args.diffusion_steps is not None:
        diffusion = replace(diffusion, steps=args.diffusion_steps)
    if args.head_steps is not None:
        if args.head_steps < 0:
            print("linewatch train: error: --head-steps is 0 or more", file=sys.stderr)
            return 2
        diffusion = replace(diffusion, head_steps=args.head_steps)
    destseg = DestsegParams()
    if args.student_steps is not None:
        destseg = replace(destseg, student_steps=args.student_steps)
    if args.segmentation_steps is not None:
        destseg = replace(destseg, segmentation_steps=args.segmentation_steps)
    destseg = replace(destseg, generated_share=args.generated_share)
    config = TrainConfig(
        data_root=args.data,
        category=args.category,
        out_dir=args.out,
        detector=args.detector,
        backbone=args.backbone,
        weights=args.weights,
        activation=args.activation,
        layers=args.layers,
        image_size=args.image_size,
        coreset_ratio=args.coreset,
        position_weight=args.position_weight,
        layer_weights=tuple(args.layer_weights) if args.layer_weights else None,
        holdout=args.holdout,
        target_fpr=args.target_fpr,
        roi=tuple(args.roi) if args.roi else None,
        seed=args.seed,
        progress=True,
        destseg=destseg,
        synthesis=SynthesisSettings(foreground=args.foreground),
        textures=args.textures,
        generated=args.generated,
        student_from=args.student_from,
        device=args.device,
        diffusion=diffusion,
        autoencoder=tuple(args.autoencoder) if args.autoencoder else None,
        members=tuple(args.members or ()),
        fold_holdout=not args.holdout_unseen,
        base=args.base,
        lora_rank=args.lora_rank,
        map_weights=tuple(args.map_weights) if args.map_weights else None,
        image_weights=tuple(args.image_weights) if args.image_weights else None,
        fusion=args.fusion,
        pass_share=args.pass_share if args.pass_share is not None else 1.0,
        folds=args.folds,
        review_fpr=args.review_fpr or None,
    )
    if args.review_fpr and not args.target_fpr < args.review_fpr < 1:
        print(
            "linewatch train: error: --review-fpr lies between --target-fpr and 1 (or is 0)", file=sys.stderr
        )
        return 2
    try:
        card = train(config)
    except TrainingDiverged as err:
        print(f"linewatch train: error: {err}", file=sys.stderr)
        return 1
    except ValueError as err:  # a setting that does not fit this detector, backbone or device
        print(f"linewatch train: error: {err}", file=sys.stderr)
        return 2
    _print_card(card, args)
    return 0


def _print_card(card: ModelCard, args: argparse.Namespace) -> None:
    info = card.training
    print(f"model {card.name} {card.version} written to {args.out}")
    if info.folds:
        print(
            f"  fitted on {info.n_fit} good images, calibrated on all of them scored out of sample"
            f" in {info.folds} folds, {info.fit_seconds:.1f} s"
        )
    else:
        print(
            f"  fitted on {info.n_fit} good images, calibrated on {info.n_holdout} held out,"
            f" {info.fit_seconds:.1f} s"
        )
    chosen = info.position_choice
    if chosen is not None and "skipped" in chosen:
        print(f"  position weight 0: {chosen['skipped']}")
    elif chosen is not None:
        print(
            f"  position weight {chosen['position_weight']}, image top share"
            f" {chosen['image_top_share']:.1%},"
            f" chosen on {chosen['n_good']} {'out-of-fold' if info.folds else 'held-out'} good images"
            f" and {chosen['n_painted']} painted copies"
        )
    if info.position_images is not None:
        folded = info.position_images > info.n_fit
        how = "the held-out ones added once calibrated" if folded else "the held-out ones kept unseen"
        print(
            f"  position statistics on {info.position_images} good images{'' if info.folds else f' ({how})'}"
        )
    if info.destseg is not None:
        for stage in ("student", "segmentation"):
            result = info.destseg[stage]
            early = ", stopped early" if result["stopped_early"] else ""
            print(
                f"  DeSTSeg {stage}: {result['steps']} steps in {result['seconds']:.0f} s on"
                f" {info.destseg['device']}, best at step {result['best_step']}"
                f" (validation {result['best_metric']}{early})"
                + (
                    f", reused from {info.destseg['student_from']}"
                    if stage == "student" and info.destseg.get("student_from")
                    else ""
                )
            )
        generated = info.destseg.get("generated")
        if generated:
            print(
                f"  generated defects: {generated['images']} from {generated['source']}"
                f" ({generated['method']}), {generated['share']:.0%} of stage 2's defects;"
                f" {generated['validation_images']} kept for its validation,"
                f" {generated['left_out_held_out_goods']} left out (drawn on held-out goods)"
            )
            if generated["seed_defects"]:
                print(
                    f"  they were learned from {len(generated['seed_defects'])} real test defects;"
                    " leave those out when you evaluate on real defects"
                )
    if info.diffusion is not None:
        trained = info.diffusion
        what = (
            f"LoRA adapter of {trained['base_version']}"
            if "base_version" in trained
            else "diffusion denoiser"
        )
        print(
            f"  {what}: {trained['steps']} steps in {trained['seconds']:.0f} s"
            f" on {trained['device']}, best at step {trained['best_step']}"
            f" (validation loss {min(trained['validation']):.4f})"
        )
        head = trained.get("head")
        if head:
            print(
                f"  segmentation head: {head['steps']} steps on {head['images']} reconstructed images"
                f" ({head['reconstruct_seconds']:.0f} s reconstructing, {head['seconds']:.0f} s training);"
                f" pixel AP on synthetic defects {head['best_pixel_ap']:.3f}"
                f" (the bare discrepancy {head['discrepancy_pixel_ap']:.3f})"
            )
    if info.ensemble is not None:
        members = ", ".join(f"{m['name']} ({m['version']})" for m in info.ensemble["members"])
        print(f"  members: {members}")
        print(
            f"  map weights {list(card.params['map_weights'])}, image weights"
            f" {list(card.params['image_weights'])}, {card.params['fusion']} fusion;"
            f" {info.ensemble['held_out_passed']} of {info.ensemble['held_out']} held-out good images"
            f" went past the pre-screen (pass share {card.params['pass_share']:.0%})"
        )
    print_operating_point(card)
    for skipped in info.skipped:
        print(f"  skipped {skipped['path']}: {skipped['reason']}")


def print_operating_point(card: ModelCard) -> None:
    """The thresholds, the REVIEW band and the rates they are estimated to give."""
    from services.vision.operating import describe

    cal = card.image_calibration
    print(
        f"  NG threshold {cal.threshold:.4f} ({cal.method} on {cal.n_scores} scores,"
        f" target FPR {cal.target_fpr:.1%})"
    )
    band = card.review
    if band is not None and band.method != "off":
        how = f"review FPR {band.review_fpr:.1%}" if band.review_fpr else band.method
        print(f"  REVIEW from {band.threshold:.4f} ({how})")
    else:
        print("  no REVIEW band: OK / NG only")
    print(f"  {describe(card.operating, cal.threshold, band)}")


def run_calibrate(args: argparse.Namespace) -> int:
    import numpy as np

    from services.vision.artifact import ArtifactError, read_card, write_card
    from services.vision.calibration import fit_threshold
    from services.vision.operating import ReviewBand, review_band

    try:
        card = read_card(args.model)
    except ArtifactError as err:
        print(f"linewatch calibrate: error: {err}", file=sys.stderr)
        return 2
    if args.camera is not None:
        return calibrate_one_camera(args, card)
    if args.off:
        print("linewatch calibrate: error: --off goes with --camera", file=sys.stderr)
        return 2
    curve = card.operating
    if curve is None:
        print(
            f"linewatch calibrate: error: {args.model} keeps no operating curve (trained before there was"
            " one); retrain it",
            file=sys.stderr,
        )
        return 2
    cal, band = card.image_calibration, card.review
    goods = np.asarray(curve.good_scores)
    try:
        if args.defects is not None:
            curve = curve.model_copy(
                update={"defects": f"real: {args.defects.name}", "defect_scores": real_defect_scores(args)}
            )
        if args.target_fpr is not None:
            fitted = fit_threshold(goods, args.target_fpr, cal.confidence)
            cal = cal.model_copy(
                update={"threshold": fitted.threshold, "method": fitted.method, "target_fpr": args.target_fpr}
            )
        if args.review_fpr is not None:
            if args.review_fpr and not cal.target_fpr < args.review_fpr < 1:
                raise ValueError("--review-fpr lies between the target FPR and 1 (or is 0)")
            band = review_band(goods, cal.threshold, args.review_fpr or None, cal.confidence)
        elif args.max_miss_rate is not None:
            edge = min(curve.threshold_for_miss_rate(args.max_miss_rate), cal.threshold)
            band = ReviewBand(threshold=edge, review_fpr=None, method="miss-rate")
        elif band is not None and band.threshold > cal.threshold:  # the NG threshold came down past it
            band = band.model_copy(update={"threshold": cal.threshold})
    except ValueError as err:
        print(f"linewatch calibrate: error: {err}", file=sys.stderr)
        return 2
    card = card.model_copy(update={"image_calibration": cal, "review": band, "operating": curve})
    if not args.dry_run:
        write_card(card, args.model)
    print(f"{card.name} {card.version}: {'would set' if args.dry_run else 'set'}")
    print_operating_point(card)
    return 0


def calibrate_one_camera(args: argparse.Namespace, card: ModelCard) -> int:
    from datetime import UTC, datetime, timedelta

    from services.config import parse_time, settings_or_defaults
    from services.review.camera import calibrate_camera, camera_goods
    from services.storage.stores import open_label_store, open_record_store
    from services.vision.artifact import write_card

    camera = args.camera
    if args.off:
        if camera not in card.cameras:
            print(f"linewatch calibrate: error: {camera} has no thresholds of its own", file=sys.stderr)
            return 2
        cameras = {k: v for k, v in card.cameras.items() if k != camera}
        if not args.dry_run:
            write_card(card.model_copy(update={"cameras": cameras}), args.model)
        print(f"{camera}: {'would go' if args.dry_run else 'back'} to the model's thresholds")
        return 0
    settings = settings_or_defaults()
    now = datetime.now(UTC)
    try:
        since = parse_time(args.since, "--since") or now - timedelta(days=7)
    except ValueError as err:
        print(f"linewatch calibrate: error: {err}", file=sys.stderr)
        return 2
    records = open_record_store(args.records or settings.stores.records)
    labels = open_label_store(args.labels or settings.stores.labels)
    try:
        goods = camera_goods(records, labels, card, camera, since)
        review_fpr = (
            args.review_fpr
            if args.review_fpr is not None
            else (card.review.review_fpr if card.review else None)
        )
        target_fpr = args.target_fpr if args.target_fpr is not None else card.image_calibration.target_fpr
        own = calibrate_camera(card, goods, target_fpr, review_fpr or None, since, now)
    except ValueError as err:
        print(f"linewatch calibrate: error: {camera}: {err}", file=sys.stderr)
        return 2
    finally:
        labels.close()
        records.close()
    if not args.dry_run:
        write_card(card.model_copy(update={"cameras": {**card.cameras, camera: own}}), args.model)
    band = (
        f", REVIEW from {own.review.threshold:.4f}"
        if own.review is not None and own.review.method != "off"
        else ""
    )
    print(
        f"{camera}: {'would set' if args.dry_run else 'set'} NG threshold"
        f" {own.image_calibration.threshold:.4f} (model's {card.image_calibration.threshold:.4f}){band},"
        f" on {own.n_goods} good frames since {since:%Y-%m-%d}"
        f" ({goods.confirmed_good} confirmed good by a person; left out: {goods.confirmed_defects} confirmed"
        f" defective, {goods.unreviewed} NG or REVIEW frames nobody reviewed)"
    )
    return 0


def real_defect_scores(args: argparse.Namespace) -> list[float]:
    """The model's raw image scores of the defect images under ``args.defects``."""
    from services.vision import evaluate
    from services.vision.inspector import Inspector

    scores, skipped = evaluate.real_defect_scores(Inspector.load(args.model), args.defects)
    for bad in skipped:
        print(f"  skipped {bad.path}: {bad.reason}")
    return scores


def run_evaluate(args: argparse.Namespace) -> int:
    from services.vision.evaluate import METRIC_KEYS, evaluate
    from services.vision.inspector import Inspector

    _set_threads(args.threads)
    inspector = Inspector.load(args.model)
    report = evaluate(inspector, args.data, args.category, args.batch_size, progress=not args.json)
    result = report.as_json()
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{inspector.card.name} {inspector.card.version} on {args.data}/{args.category}:"
        f" {report.n_images} images"
    )
    for key in (*METRIC_KEYS, "image_ap"):
        value = result.get(key)
        print(f"  {key:<12} {'n/a' if value is None else f'{value:.4f}'}")
    print(f"  {'images/s':<12} {report.images_per_s:.1f} (inference, batch {report.batch_size})")
    for skipped in report.skipped:
        print(f"  skipped {skipped.path}: {skipped.reason}")
    return 0


def output_names(paths: list[Path]) -> dict[Path, str]:
    """A distinct name for each image's results: its stem, or, for images that share a stem, as
    many of their folders in front as it takes to tell them apart (MVTec's ``good/000.png`` and
    ``broken_large/000.png`` become ``good-000`` and ``broken_large-000``). The same file given
    twice has one name here; the command writes its second result as ``NAME-2``."""
    unique = list(dict.fromkeys(paths))
    parts = {path: path.resolve().with_suffix("").parts[1:] for path in unique}
    by_stem: dict[str, list[Path]] = {}
    for path in unique:
        by_stem.setdefault(path.stem, []).append(path)
    names: dict[Path, str] = {}
    for group in by_stem.values():
        depth = 1
        while True:
            candidate = {path: "-".join(parts[path][-depth:]) for path in group}
            if len(set(candidate.values())) == len(group) or depth >= max(len(parts[p]) for p in group):
                break
            depth += 1
        names.update(candidate)
    return names


def run_predict(args: argparse.Namespace) -> int:
    from services.vision.images import ImageError, load_image
    from services.vision.inspector import Inspector
    from services.vision.overlay import encode_png, render_overlay

    _set_threads(args.threads)
    inspector = Inspector.load(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    names = output_names(list(args.images))
    written: set[str] = set()
    failures = 0
    for start in range(0, len(args.images), args.batch_size):
        paths, images = [], []
        for path in args.images[start : start + args.batch_size]:
            try:
                images.append(load_image(path))
                paths.append(path)
            except ImageError as err:
                failures += 1
                print(json.dumps({"image": str(path), "error": err.reason}))
        if not images:
            continue
        for path, image, prediction in zip(paths, images, inspector.predict(images), strict=True):
            name, again = names[path], 2
            while name in written:  # the same file given twice: keep both results
                name, again = f"{names[path]}-{again}", again + 1
            written.add(name)
            overlay_path = args.out / f"{name}_overlay.png"
            overlay_path.write_bytes(
                encode_png(
                    render_overlay(image, prediction.anomaly_map, prediction.defects, inspector.card.roi)
                )
            )
            result = {
                "image": str(path),
                "model": inspector.card.name,
                "model_version": inspector.card.version,
                "score_raw": round(prediction.score_raw, 6),
                "score": round(prediction.score, 6),
                "verdict": prediction.verdict,
                "defects": [asdict(d) for d in prediction.defects],
                "overlay": str(overlay_path),
            }
            (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
            print(json.dumps(result))
    return 1 if failures else 0


def _defect_generator(args: argparse.Namespace) -> Any:
    """The diffusion model, its seed defects and (unless --adapter-steps 0) its adapter to them."""
    from services.vision.artifact import load_artifact
    from services.vision.diffusion.generate import (
        DefectGenerator,
        GenerationParams,
        fit_defect_adapter,
        load_seeds,
    )
    from services.vision.diffusion.model import DiffusionModel

    model, card = load_artifact(args.model)
    if not isinstance(model, DiffusionModel):
        print(
            f"linewatch synth: error: {args.model} is a {card.kind} model, not a diffusion model",
            file=sys.stderr,
        )
        return None
    params = GenerationParams(adapter_steps=args.adapter_steps)
    seeds = load_seeds(args.data, args.category, args.seed_defects, card.image_size)
    print(f"learning from {len(seeds)} real defects: {', '.join(s.name for s in seeds)}", file=sys.stderr)
    if params.adapter_steps > 0:
        model = fit_defect_adapter(model, seeds, params, args.device)
    return DefectGenerator(model, seeds, params)


def run_synth(args: argparse.Namespace) -> int:
    from services.vision.synthesis import SynthesisSettings
    from services.vision.synthetic_set import write_synthetic_set

    generator = None
    if args.method == "diffusion":
        if args.model is None:
            print(
                "linewatch synth: error: --method diffusion needs --model (a diffusion model)",
                file=sys.stderr,
            )
            return 2
        if args.size is not None:
            print(
                "linewatch synth: error: diffusion generates at the model's size; leave out --size",
                file=sys.stderr,
            )
            return 2
        generator = _defect_generator(args)
        if generator is None:
            return 2
    elif args.model is not None:
        print("linewatch synth: error: --model is a --method diffusion setting", file=sys.stderr)
        return 2
    method = "perlin" if args.method == "diffusion" else args.method  # the settings' own methods
    settings = SynthesisSettings(method=method, sources=tuple(args.sources), foreground=args.foreground)
    report = write_synthetic_set(
        args.data,
        args.category,
        args.out,
        args.n,
        settings,
        split=args.split,
        seed=args.seed,
        textures_dir=args.textures,
        size=args.size,
        copy_goods=not args.no_goods,
        overwrite=args.overwrite,
        generator=generator,
    )
    print(
        f"wrote {report.written} synthetic images and their masks to {report.out_dir}"
        f" ({report.goods_copied} good images copied beside them)"
    )
    for skipped in report.skipped:
        print(f"  skipped {skipped.path}: {skipped.reason}")
    print(
        "  evaluate a model on it: linewatch evaluate --model DIR"
        f" --data {args.out} --category {args.category}"
    )
    return 0
