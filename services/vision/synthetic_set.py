"""``linewatch synth``: an MVTec-layout test set of synthetic defects on a category's good images.

Writes ``OUT/CAT/test/synthetic/NNN.png`` with ``OUT/CAT/ground_truth/synthetic/NNN_mask.png``
(255 where the defect is), copies the good images it drew on to ``OUT/CAT/test/good/`` (so that
``linewatch evaluate --data OUT --category CAT`` has both classes), and a ``synthetic.json`` manifest:
the settings, the seed and, per image, its good source, texture source and mask share. A plant can
so measure a model's miss rate before its first real defect arrives.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from services.vision.dataset import DatasetError, SkippedFile, _images_in
from services.vision.images import ImageError, load_image
from services.vision.synthesis import (
    SynthesisError,
    SynthesisSettings,
    foreground_mask,
    load_textures,
    paint_defect,
    synthesise,
)

if TYPE_CHECKING:
    from services.vision.diffusion.generate import DefectGenerator

MANIFEST = "synthetic.json"
WRITTEN_FOLDERS = ("test/synthetic", "ground_truth/synthetic", "test/good")
GENERATION_BATCH = 8  # diffusion-generated defects made together (one denoiser pass per step)


@dataclass
class SynthReport:
    out_dir: Path  # OUT/CAT
    written: int
    goods_copied: int
    skipped: list[SkippedFile] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)


def _prepare(out_category: Path, source_category: Path, overwrite: bool) -> None:
    if out_category.resolve() == source_category.resolve():
        raise SynthesisError(
            f"{out_category} is the source data itself; write the synthetic set to another --out"
        )
    if out_category.exists() and any(out_category.iterdir()):
        if not overwrite:
            raise SynthesisError(
                f"{out_category} is not empty; pass --overwrite to replace its synthetic set"
            )
        for folder in WRITTEN_FOLDERS:
            shutil.rmtree(out_category / folder, ignore_errors=True)
        (out_category / MANIFEST).unlink(missing_ok=True)


def write_synthetic_set(
    data_root: Path,
    category: str,
    out_root: Path,
    n: int,
    settings: SynthesisSettings | None = None,
    split: str = "test",
    seed: int = 0,
    textures_dir: Path | None = None,
    size: int | None = None,
    copy_goods: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    generator: DefectGenerator | None = None,
) -> SynthReport:
    """Draw ``n`` synthetic defects on the good images of ``data_root/category/split/good``, in turn
    (image ``i`` on good ``i mod G``, from the seed ``(seed, i)``), and write the set (see the
    module's docstring). ``size``: resize each good to ``size`` x ``size`` first (default: as is).
    Unreadable goods and textures are skipped and listed in the report. With a ``generator``
    (diffusion/generate.py) the defects are generated from real ones, at the model's size, and the
    manifest lists the real defects it learned from (leave them out when evaluating on real ones)."""
    settings = settings or SynthesisSettings()
    if n < 1:
        raise SynthesisError(f"--n must be 1 or more, got {n}")
    source = Path(data_root) / category / split / "good"
    if not source.is_dir():
        raise DatasetError(
            f"no good images folder {source} (expected the MVTec layout ROOT/CAT/{split}/good)"
        )
    goods = _images_in(source)
    if not goods:
        raise DatasetError(f"no good images in {source}")
    out_category = Path(out_root) / category
    _prepare(out_category, Path(data_root) / category, overwrite)
    skipped: list[SkippedFile] = []
    textures = load_textures(textures_dir, skipped) if textures_dir is not None else None
    if textures is not None and "folder" not in settings.sources:
        settings = SynthesisSettings(**{**asdict(settings), "sources": (*settings.sources, "folder")})
    image_dir = out_category / "test" / "synthetic"
    mask_dir = out_category / "ground_truth" / "synthetic"
    good_dir = out_category / "test" / "good"
    for folder in (image_dir, mask_dir) + ((good_dir,) if copy_goods else ()):
        folder.mkdir(parents=True, exist_ok=True)
    report = SynthReport(out_category, 0, 0, skipped)
    usable = list(goods)
    bar = tqdm(total=n, desc="synthetic defects", unit="image", disable=not progress)
    pending: list[tuple[Path, npt.NDArray[np.uint8], int, npt.NDArray[np.bool_]]] = []  # to generate

    def write(path: Path, out: npt.NDArray[np.uint8], mask: npt.NDArray[np.bool_], kind: str) -> None:
        name = f"{report.written:03d}"
        _write_png(image_dir / f"{name}.png", out)
        cv2.imwrite(str(mask_dir / f"{name}_mask.png"), mask.astype(np.uint8) * 255)
        report.images.append(
            {
                "image": f"test/synthetic/{name}.png",
                "good": str(path),
                "source": kind,
                "mask_share": round(float(mask.mean()), 5),
            }
        )
        report.written += 1
        bar.update()

    def flush() -> None:
        assert generator is not None
        made = generator.generate_batch(
            [q[1] for q in pending], [q[2] for q in pending], [q[3] for q in pending]
        )
        for (path, _, _, _), (out, mask, kind) in zip(pending, made, strict=True):
            write(path, out, mask, kind)
        pending.clear()

    i = 0
    while report.written + len(pending) < n and usable:
        path = usable[i % len(usable)]
        try:
            image = load_image(path)
        except ImageError as err:
            skipped.append(SkippedFile(str(path), err.reason))
            usable.remove(path)
            continue
        if generator is not None:
            size = generator.size
        if size is not None:
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        index = report.written + len(pending)
        item_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
        foreground = foreground_mask(image, settings.foreground)
        i += 1
        if generator is not None:  # generated a batch at a time
            pending.append((path, image, item_seed, foreground))
            if len(pending) == GENERATION_BATCH:
                flush()
            continue
        if settings.method == "paint":
            rng = np.random.default_rng(item_seed)
            donor_path = usable[i % len(usable)]
            donor: npt.NDArray[np.uint8]
            try:
                donor = cv2.resize(
                    load_image(donor_path), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_AREA
                ).astype(np.uint8)
            except ImageError:
                donor = np.roll(image, (image.shape[0] // 3, image.shape[1] // 3), axis=(0, 1))
            painted = paint_defect(image, donor, rng, foreground=foreground, kinds=settings.paint_kinds)
            out, mask, kind = painted.image, painted.mask, painted.kind
        else:
            out, mask, kind = synthesise(image, item_seed, settings, textures, foreground)
        write(path, out, mask, kind)
    if pending:
        flush()
    bar.close()
    if report.written < n:
        raise DatasetError(f"no good image in {source} could be read")
    if copy_goods:
        for path in goods:
            if str(path) in {s.path for s in skipped}:
                continue
            target = good_dir / path.name
            if size is None:
                shutil.copy2(path, target)
            else:
                image = cv2.resize(load_image(path), (size, size), interpolation=cv2.INTER_AREA)
                _write_png(target.with_suffix(".png"), image)
            report.goods_copied += 1
    manifest = {
        "source": str(source),
        "method": "diffusion" if generator is not None else settings.method,
        "settings": asdict(settings),
        "generation": (
            {"params": generator.params.as_dict(), "seed_defects": [s.name for s in generator.seeds]}
            if generator is not None
            else None
        ),
        "seed": seed,
        "size": size,
        "textures": str(textures_dir) if textures_dir is not None else None,
        "images": report.images,
        "skipped": [asdict(s) for s in skipped],
    }
    (out_category / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return report


def _write_png(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


@dataclass
class GeneratedDefects:
    """Defect images from a synthetic set, with their masks, at a model's input size, for DeSTSeg's
    segmentation stage (``linewatch train --detector destseg --generated DIR``)."""

    images: Any  # torch uint8 (M, 3, S, S)
    masks: Any  # torch bool (M, S, S)
    source: str
    method: str
    seed_defects: list[str]  # real defects the generator learned from (leave them out of evaluation)
    left_out: int  # images drawn on a held-out good, left out so calibration stays unseen


def load_generated(folder: Path, size: int, held_out: list[Path] | None = None) -> GeneratedDefects:
    """The defect images and masks of the synthetic set in ``folder`` (``OUT/CAT`` of ``linewatch
    synth``), resized to ``size``; images drawn on one of the ``held_out`` goods are left out (the
    model calibrates on those goods, which must stay unseen). Unreadable images are errors: a set
    the engineer named is used whole or not at all."""
    import torch

    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise DatasetError(
            f"{folder} is not a synthetic set: no {MANIFEST} (write one with linewatch synth --out ROOT,"
            " then pass ROOT/CATEGORY)"
        )
    manifest = json.loads(manifest_path.read_text())
    skip = {Path(p).resolve() for p in held_out or []}
    images, masks, left_out = [], [], 0
    for item in manifest.get("images", []):
        if Path(item["good"]).resolve() in skip:
            left_out += 1
            continue
        image_path = folder / item["image"]
        mask_path = folder / "ground_truth" / "synthetic" / f"{Path(item['image']).stem}_mask.png"
        try:
            image = load_image(image_path)
        except ImageError as err:
            raise DatasetError(f"generated defect {image_path} cannot be read: {err.reason}") from err
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise DatasetError(f"generated defect {image_path} has no readable mask {mask_path}")
        if image.shape[:2] != (size, size):
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        if mask.shape != (size, size):
            mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
        if not (mask > 0).any():
            continue
        images.append(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))
        masks.append(torch.from_numpy(mask > 0))
    if not images:
        raise DatasetError(
            f"no usable generated defect in {folder}"
            + (f" ({left_out} were drawn on held-out goods)" if left_out else "")
        )
    generation = manifest.get("generation") or {}
    return GeneratedDefects(
        torch.stack(images),
        torch.stack(masks),
        str(folder),
        str(manifest.get("method", "?")),
        list(generation.get("seed_defects", [])),
        left_out,
    )
