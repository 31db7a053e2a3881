"""The diffusion detector (services/vision/diffusion/): scheduler maths against closed forms and
diffusers' own DDIM step, the tiny pretrained autoencoder (TAEF2) round trip, a tiny denoiser that
trains on the CPU with a falling loss, guided reconstruction that keeps a good part and removes a
painted defect, the artifact round trip, and per-recipe LoRA adapters: trained on another recipe
with the base frozen, swapped in and out without reloading, refused by another base; and defects
generated from a few real ones (AdaBLDM) that leave every pixel outside their exact mask alone."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from services.cli import main
from services.vision.artifact import ArtifactError, load_adapter, load_artifact, read_card, save_artifact
from services.vision.backbone import FeatureExtractor, build_feature_extractor
from services.vision.destseg import DESTSEG_LAYERS
from services.vision.diffusion.autoencoder import AutoencoderError, TinyAutoencoder
from services.vision.diffusion.generate import (
    DefectGenerator,
    DefectSeed,
    GenerationParams,
    load_seeds,
    trimap,
)
from services.vision.diffusion.head import fit_head
from services.vision.diffusion.lora import AdapterError, LoraSettings
from services.vision.diffusion.model import (
    DiffusionModel,
    DiffusionParams,
    add_noise,
    ddim_step,
    params_for_card,
    scheduler_alphas,
)
from services.vision.diffusion.train import DiffusionTraining, fit_adapter, fit_diffusion
from services.vision.images import load_image
from services.vision.synthesis import Synthesiser, SynthesisError, foreground_mask, paint_defect
from services.vision.train import TrainConfig, load_goods, train
from tests.conftest import SHARED

SIZE = 64
TAEF2 = (SHARED / "weights" / "taef2_encoder.pth", SHARED / "weights" / "taef2_decoder.pth")


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_noising_and_one_ddim_step_match_their_closed_forms(schedule: str) -> None:
    from diffusers import DDIMScheduler

    params = DiffusionParams(schedule=schedule)  # type: ignore[arg-type]
    alphas = scheduler_alphas(params)
    assert alphas.shape == (1000,) and bool((alphas[1:] < alphas[:-1]).all())  # less signal each step
    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    t = torch.tensor([10, 700])
    noised = add_noise(x0, eps, t, alphas)
    for i, step in enumerate(t.tolist()):
        abar = float(alphas[step])
        torch.testing.assert_close(
            noised[i], abar**0.5 * x0[i] + (1 - abar) ** 0.5 * eps[i], rtol=1e-5, atol=1e-6
        )
    # with the true noise, one step to the clean sample gives x0 back exactly
    back, predicted = ddim_step(noised[1:], eps[1:], 700, -1, alphas)
    torch.testing.assert_close(back, x0[1:], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(predicted, x0[1:], rtol=1e-4, atol=1e-4)
    # and an intermediate step is diffusers' own DDIM step (eta 0)
    reference = DDIMScheduler(
        num_train_timesteps=1000, beta_schedule={"linear": "linear", "cosine": "squaredcos_cap_v2"}[schedule],
        clip_sample=False, set_alpha_to_one=True,
    )  # fmt: skip
    reference.set_timesteps(10)  # type: ignore[attr-defined]
    ours, _ = ddim_step(noised[1:], eps[1:], 700, 600, alphas)
    theirs = reference.step(eps[1:], 700, noised[1:], eta=0.0).prev_sample  # type: ignore[attr-defined]
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_the_tiny_pretrained_autoencoder_round_trips_a_real_image(bottle_root: Path) -> None:
    if not TAEF2[0].is_file():
        pytest.skip("shared TAEF2 weights not found")
    autoencoder = TinyAutoencoder.load(*TAEF2)
    assert autoencoder.latent_channels == 32
    image = load_image(bottle_root / "bottle" / "train" / "good" / "000.png")
    pixels = torch.from_numpy(np.ascontiguousarray(image[:256, :256].transpose(2, 0, 1))).float()[None] / 255
    with torch.inference_mode():
        latents = autoencoder.encode(pixels)
        back = autoencoder.decode(latents)
    assert latents.shape == (1, 32, 32, 32)
    psnr = 10 * np.log10(1 / float(((back - pixels) ** 2).mean()))
    assert psnr > 30
    with pytest.raises(AutoencoderError, match="multiples of 8"):
        autoencoder.encode(pixels[..., :250])


def test_weights_that_are_no_autoencoder_are_refused(tmp_path: Path) -> None:
    torch.save({"weight": torch.zeros(3)}, tmp_path / "enc.pth")
    with pytest.raises(AutoencoderError, match="not a TAESD-style encoder"):
        TinyAutoencoder.load(tmp_path / "enc.pth", tmp_path / "enc.pth")
    with pytest.raises(AutoencoderError, match="do not exist"):
        TinyAutoencoder.load(tmp_path / "none.pth", tmp_path / "enc.pth")


@pytest.fixture(scope="module")
def extractor(mobilenet_weights: Path) -> FeatureExtractor:
    return build_feature_extractor("mobilenet_v2", DESTSEG_LAYERS["mobilenet_v2"], mobilenet_weights, "relu")


@pytest.fixture(scope="module")
def goods(synthetic_data: Path) -> torch.Tensor:
    paths = sorted((synthetic_data / "synthetic" / "train" / "good").iterdir())
    config = TrainConfig(synthetic_data, "synthetic", Path("unused"), image_size=SIZE, progress=False)
    return load_goods(paths, config, [])[0]


@pytest.fixture(scope="module")
def trained(extractor: FeatureExtractor, goods: torch.Tensor) -> tuple[DiffusionModel, DiffusionTraining]:
    params = DiffusionParams(
        space="pixel", pixel_size=32, channels=(32, 64), steps=150, batch_size=8, lr=3e-3, eval_every=50,
        ema_decay=0.95,
    )  # fmt: skip
    return fit_diffusion(extractor, goods[:32], goods[32:], SIZE, params, None, device="cpu", progress=False)


def test_a_tiny_denoiser_trains_on_the_cpu_and_its_loss_falls(
    trained: tuple[DiffusionModel, DiffusionTraining],
) -> None:
    model, info = trained
    assert info.steps == 150 and info.device == "cpu" and len(info.validation) == 3
    assert info.losses[-1] < 0.6 * info.losses[0]
    assert info.validation[-1] < info.validation[0]
    assert all(v > 0 for v in info.map_scale)
    assert not model.training and model.params.unet_config["in_channels"] == 3


def test_a_good_part_reconstructs_closer_than_one_with_a_defect(
    trained: tuple[DiffusionModel, DiffusionTraining], goods: torch.Tensor
) -> None:
    model, _ = trained
    rng = np.random.default_rng(0)
    clean, defected, masks = [], [], []
    for i in range(32, 40):
        image = goods[i].permute(1, 2, 0).numpy()
        painted = paint_defect(image, goods[i - 1].permute(1, 2, 0).numpy(), rng, "patch")
        clean.append(goods[i])
        defected.append(torch.from_numpy(painted.image).permute(2, 0, 1))
        masks.append(torch.from_numpy(painted.mask))
    with torch.inference_mode():
        errors = []
        for batch in (torch.stack(clean), torch.stack(defected)):
            pixels = batch.float() / 255
            errors.append((model.reconstruct(pixels) - pixels).abs().mean(dim=1))
    mask = torch.stack(masks)
    inside_defect = errors[1][mask].mean()
    same_place_clean = errors[0][mask].mean()
    assert inside_defect > 1.5 * same_place_clean  # the defect is not redrawn, the good part is


def test_the_artifact_round_trip_gives_identical_scores(
    trained: tuple[DiffusionModel, DiffusionTraining],
    goods: torch.Tensor,
    destseg_model_dir: Path,
    tmp_path: Path,
) -> None:
    model, info = trained
    card = read_card(destseg_model_dir)  # a real card to borrow the common fields from
    fields = card.model_dump(exclude={"format_version", "versions", "tensors", "weights_sha256"})
    fields.update(kind="diffusion", image_size=SIZE, params=params_for_card(model.params))
    fields["training"]["destseg"], fields["training"]["diffusion"] = None, info.as_dict()
    save_artifact(model, fields, tmp_path / "model")
    loaded, loaded_card = load_artifact(tmp_path / "model")
    assert isinstance(loaded, DiffusionModel) and loaded_card.kind == "diffusion"
    images = (goods[:3].float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected, got = model(images), loaded(images)
        alone = loaded(images[1:2])  # a frame's score does not depend on its batch
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(alone[0], got[0][1:2], rtol=1e-4, atol=1e-5)


def test_a_segmentation_head_on_the_discrepancy_learns_synthetic_defects_and_round_trips(
    trained: tuple[DiffusionModel, DiffusionTraining],
    synthetic_data: Path,
    destseg_model_dir: Path,
    tmp_path: Path,
) -> None:
    model = copy.deepcopy(trained[0])
    model.params = replace(model.params, head_steps=120, head_images=32, head_channels=16)
    paths = sorted((synthetic_data / "synthetic" / "train" / "good").iterdir())
    config = TrainConfig(synthetic_data, "synthetic", Path("unused"), image_size=SIZE, progress=False)
    goods, foregrounds = load_goods(paths, config, [])
    head = fit_head(
        model, goods[:32], foregrounds[:32], goods[32:40], foregrounds[32:40], Synthesiser(), False
    )
    assert head.images == 32 and head.validation_images == 16 and head.steps == 120
    assert head.losses[-1] < 0.8 * head.losses[0]
    # it learns what the synthetic defects on held-out parts look like (at this tiny size it does
    # not beat the bare discrepancy: benchmarks/ensemble.py measures that at 256 px)
    assert head.best_pixel_ap > 1.5 * head.validation[0] and head.discrepancy_pixel_ap > 0
    assert model.segmenter is not None and model.params.head_in_channels > 0
    images = normalised(goods[-3:])
    with torch.inference_mode():
        scores, maps, _ = model(images)
    assert maps.shape == (3, SIZE, SIZE) and float(maps.max()) <= 1.0 and float(maps.min()) > 0
    out = save_diffusion(model, trained[1], destseg_model_dir, tmp_path / "model")
    loaded, card = load_artifact(out)
    assert isinstance(loaded, DiffusionModel) and loaded.segmenter is not None
    assert card.params["head_in_channels"] == model.params.head_in_channels
    with torch.inference_mode():
        again = loaded(images)
    torch.testing.assert_close(again[0], scores)
    torch.testing.assert_close(again[1], maps)
    bare = copy.deepcopy(model)
    bare.segmenter = None  # without a head the map is the scaled discrepancy again
    with torch.inference_mode():
        assert not torch.allclose(bare(images)[1], maps)


# --- per-recipe LoRA adapters (diffusion/lora.py) ---


def save_diffusion(model: DiffusionModel, info: DiffusionTraining, card_from: Path, out: Path) -> Path:
    card = read_card(card_from)  # a real card to borrow the common fields from
    fields = card.model_dump(exclude={"format_version", "versions", "tensors", "weights_sha256"})
    fields.update(kind="diffusion", image_size=SIZE, params=params_for_card(model.params))
    fields["training"]["destseg"], fields["training"]["diffusion"] = None, info.as_dict()
    save_artifact(model, fields, out)
    return out


def normalised(pixels: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    return (pixels.float() / 255 - mean) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def other_recipe(goods: torch.Tensor) -> torch.Tensor:
    """Another product on the same line: the synthetic parts with their colour channels turned."""
    return goods[:, [2, 0, 1]].contiguous()


@pytest.fixture(scope="module")
def adapted(
    trained: tuple[DiffusionModel, DiffusionTraining], other_recipe: torch.Tensor
) -> tuple[DiffusionModel, DiffusionTraining]:
    base, _ = trained
    params = replace(base.params, steps=60, lr=3e-3, eval_every=20)
    settings = LoraSettings(name="recipe-b", rank=4, alpha=4)
    return fit_adapter(
        base, other_recipe[:32], other_recipe[32:], settings, params, "base-v1", "cpu", None, False
    )


def test_an_adapter_learns_the_new_recipe_and_leaves_the_base_alone(
    trained: tuple[DiffusionModel, DiffusionTraining],
    adapted: tuple[DiffusionModel, DiffusionTraining],
    goods: torch.Tensor,
) -> None:
    base, _ = trained
    model, info = adapted
    assert info.steps == 60 and info.validation[-1] < info.validation[0]
    assert base.adapters == {} and base.active_adapter is None  # fit_adapter worked on a copy
    assert model.active_adapter == "recipe-b" and model.params.lora is not None
    assert model.params.lora["base_denoiser_sha256"] == base.base_sha256() == model.base_sha256()
    lora = sum(p.numel() for n, p in model.unet.named_parameters() if "lora_" in n)
    assert 0 < lora < 0.2 * sum(p.numel() for p in base.unet.parameters())
    with torch.inference_mode():
        assert not torch.equal(model(normalised(goods[:2]))[1], base(normalised(goods[:2]))[1])


def test_swapping_adapters_changes_the_outputs_and_swapping_back_restores_them(
    trained: tuple[DiffusionModel, DiffusionTraining],
    adapted: tuple[DiffusionModel, DiffusionTraining],
    goods: torch.Tensor,
    destseg_model_dir: Path,
    tmp_path: Path,
) -> None:
    base_dir = save_diffusion(*trained, destseg_model_dir, tmp_path / "base")
    adapter_dir = save_diffusion(*adapted, destseg_model_dir, tmp_path / "recipe-b")
    assert read_card(adapter_dir).params["lora"]["name"] == "recipe-b"
    line, _ = load_artifact(base_dir)
    alone, _ = load_artifact(adapter_dir)  # the adapter's artifact also loads on its own
    assert isinstance(line, DiffusionModel) and isinstance(alone, DiffusionModel)
    images = normalised(goods[:3])
    with torch.inference_mode():
        before = line(images)
        assert load_adapter(line, adapter_dir) == "recipe-b"
        still_base = line(images)  # attached, not in use yet
        line.use_adapter("recipe-b")
        with_adapter = line(images)
        line.use_adapter(None)
        back = line(images)
        line.use_adapter("recipe-b")
        again = line(images)
        standalone = alone(images)
    for a, b in zip(before, still_base, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(before, back, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(with_adapter, again, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(with_adapter, standalone, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert float((with_adapter[1] - before[1]).abs().max()) > 1e-3
    with pytest.raises(AdapterError, match="no adapter named recipe-c"):
        line.use_adapter("recipe-c")
    with pytest.raises(ArtifactError, match="already holds an adapter named recipe-b"):
        load_adapter(line, adapter_dir)


def test_an_adapter_of_another_base_is_refused(
    trained: tuple[DiffusionModel, DiffusionTraining],
    adapted: tuple[DiffusionModel, DiffusionTraining],
    destseg_model_dir: Path,
    tmp_path: Path,
) -> None:
    adapter_dir = save_diffusion(*adapted, destseg_model_dir, tmp_path / "recipe-b")
    other = copy.deepcopy(trained[0])
    with torch.no_grad():
        next(other.unet.parameters()).add_(0.01)  # a base trained further
    with pytest.raises(ArtifactError, match="trained on another base denoiser"):
        load_adapter(other, adapter_dir)
    with pytest.raises(ArtifactError, match="holds no LoRA adapter"):
        load_adapter(other, save_diffusion(*trained, destseg_model_dir, tmp_path / "base"))


def test_linewatch_trains_an_adapter_from_a_base_model_folder(
    synthetic_data: Path,
    mobilenet_weights: Path,
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``train --detector diffusion --base MODEL``: the whole path through train() and the CLI, at a
    tiny budget (the adapter's accuracy is not what is tested here)."""
    tiny = DiffusionParams(
        space="pixel", pixel_size=32, channels=(32, 64), steps=20, batch_size=4, eval_every=10,
        head_steps=20, head_images=16, head_channels=8,
    )  # fmt: skip
    base_config = TrainConfig(
        synthetic_data, "synthetic", tmp_path / "base", detector="diffusion", weights=mobilenet_weights,
        activation="relu", image_size=SIZE, diffusion=tiny, device="cpu", progress=False,
    )  # fmt: skip
    base = train(base_config)
    assert base.training.diffusion is not None and base.training.diffusion["head"]["steps"] == 20
    adapter = train(replace(base_config, out_dir=tmp_path / "adapter", base=tmp_path / "base", lora_rank=2,
                            weights=None, diffusion=replace(tiny, steps=10)))  # fmt: skip
    lora = adapter.params["lora"]
    assert adapter.kind == "diffusion" and lora["rank"] == 2 and lora["name"] == "synthetic"
    assert lora["base_version"] == read_card(tmp_path / "base").version
    assert adapter.training.diffusion is not None and adapter.training.diffusion["steps"] == 10
    assert any(k.startswith("lora.") for k in adapter.tensors)
    loaded, _ = load_artifact(tmp_path / "adapter")  # the base's segmentation head comes along
    assert isinstance(loaded, DiffusionModel) and loaded.segmenter is not None
    with pytest.raises(ValueError, match="is an adapter itself"):
        train(replace(base_config, out_dir=tmp_path / "again", base=tmp_path / "adapter"))
    with pytest.raises(ValueError, match="is a patchcore model"):
        train(replace(base_config, out_dir=tmp_path / "again", base=model_dir))
    common = ["train", "--data", str(synthetic_data), "--category", "synthetic", "--out", str(tmp_path / "m")]
    assert main([*common, "--base", str(tmp_path / "base")]) == 2
    assert "is a diffusion setting" in capsys.readouterr().err


# --- defect generation by blended latent diffusion (diffusion/generate.py) ---


@pytest.fixture(scope="module")
def painted_seeds(goods: torch.Tensor) -> list[DefectSeed]:
    """Stand-ins for real defects at the tiny model's size: patches painted on good parts."""
    rng = np.random.default_rng(3)
    seeds = []
    for i in range(3):
        image = goods[i].permute(1, 2, 0).numpy()
        painted = paint_defect(image, goods[i + 5].permute(1, 2, 0).numpy(), rng, "patch")
        seeds.append(DefectSeed(f"painted/{i}.png", painted.image, painted.mask.astype(bool)))
    return seeds


def test_generated_defects_change_only_the_pixels_of_their_exact_mask_on_the_part(
    trained: tuple[DiffusionModel, DiffusionTraining], goods: torch.Tensor, painted_seeds: list[DefectSeed]
) -> None:
    generator = DefectGenerator(trained[0], painted_seeds, GenerationParams(ddim_steps=4, adapter_steps=0))
    for i in range(6):
        image = np.ascontiguousarray(goods[10 + i].permute(1, 2, 0).numpy())
        foreground = foreground_mask(image, "auto")
        out, mask, kind = generator.generate(image, i, foreground)
        assert out.shape == image.shape and out.dtype == np.uint8 and kind.startswith("diffusion:painted/")
        assert mask.any() and np.array_equal(out[~mask], image[~mask])  # bit for bit outside the mask
        assert (mask & foreground).sum() >= 0.95 * mask.sum()  # on the part
        assert np.abs(out[mask].astype(int) - image[mask].astype(int)).mean() > 5  # something was made
        again, again_mask, _ = generator.generate(image, i, foreground)
        assert np.array_equal(again, out) and np.array_equal(again_mask, mask)  # deterministic per seed
    tri = trimap(mask, foreground)
    assert set(np.unique(tri)) <= {0.0, 0.5, 1.0} and bool((tri[mask] == 1).all())
    images = [np.ascontiguousarray(goods[10 + i].permute(1, 2, 0).numpy()) for i in range(3)]
    alone = [generator.generate(im, i, foreground_mask(im, "auto")) for i, im in enumerate(images)]
    together = generator.generate_batch(images, [0, 1, 2], [foreground_mask(im, "auto") for im in images])
    for (a, a_mask, a_kind), (b, b_mask, b_kind) in zip(alone, together, strict=True):
        assert np.array_equal(a_mask, b_mask) and a_kind == b_kind and np.array_equal(a[~a_mask], b[~b_mask])
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2  # a batch makes the same defect


def test_seed_defects_are_real_test_defects_and_at_most_ten(bottle_root: Path) -> None:
    seeds = load_seeds(bottle_root, "bottle", 3, SIZE)
    assert len(seeds) == 3 and len({s.name.split("/")[0] for s in seeds}) == 3  # spread over the types
    assert all(s.image.shape == (SIZE, SIZE, 3) and s.mask.any() for s in seeds)
    with pytest.raises(SynthesisError, match="1 to 10 real defect images"):
        load_seeds(bottle_root, "bottle", 11, SIZE)


def test_linewatch_synth_generates_an_mvtec_set_from_a_few_real_defects(
    trained: tuple[DiffusionModel, DiffusionTraining],
    bottle_root: Path,
    destseg_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_dir = save_diffusion(*trained, destseg_model_dir, tmp_path / "model")
    out = tmp_path / "set"
    common = ["synth", "--data", str(bottle_root), "--category", "bottle", "--out", str(out), "--n", "3"]
    assert main([*common, "--method", "diffusion"]) == 2
    assert "needs --model" in capsys.readouterr().err
    assert main([*common, "--model", str(model_dir)]) == 2
    assert main([*common, "--method", "diffusion", "--model", str(model_dir), "--seed-defects", "2",
                 "--adapter-steps", "2", "--no-goods"]) == 0  # fmt: skip
    manifest = json.loads((out / "bottle" / "synthetic.json").read_text())
    assert manifest["method"] == "diffusion" and len(manifest["generation"]["seed_defects"]) == 2
    assert [i["source"].split(":")[0] for i in manifest["images"]] == ["diffusion"] * 3
    image = load_image(out / "bottle" / "test" / "synthetic" / "000.png")
    mask = load_image(out / "bottle" / "ground_truth" / "synthetic" / "000_mask.png")
    assert image.shape == (SIZE, SIZE, 3) and mask.shape[:2] == (SIZE, SIZE) and mask.max() == 255
