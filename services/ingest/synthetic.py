"""A synthetic injection-moulding line: process data, rendered parts with planted defects, datasets.

Used by ``linewatch demo`` and by tests. Everything is deterministic given a seed and needs only
numpy and OpenCV.

* :class:`ProcessSimulator`: the machine's process parameters over time: a slow random walk around
  the recipe set points, occasional excursions (mould temperature dips, injection speed spikes,
  hold pressure surges, micro-stops) and an optional drift scenario.
* :func:`defect_probabilities` / :func:`sample_defects`: how likely each defect kind is under a
  :class:`ProcessState`. These are the planted cause-effect links a root-cause analysis should find.
* :func:`render_part`: one moulded housing on the conveyor, with planted defects and their exact
  pixel mask.
* :class:`SyntheticLine` ties them together as a frame source; :func:`write_dataset` writes an
  MVTec AD folder plus ``process.csv`` and ``parts.csv``.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Final

import cv2
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating[Any]]  # images are float32, process series float64
BoolArray = npt.NDArray[np.bool_]
ImageArray = npt.NDArray[np.uint8]

DEFECT_KINDS: Final[tuple[str, ...]] = ("sink_mark", "flash", "scratch", "contamination", "crack")
DRIFT_SCENARIOS: Final[tuple[str, ...]] = ("mould_cooling",)
DEFAULT_START: Final[datetime] = datetime(2025, 1, 6, 6, 0, tzinfo=UTC)
MAX_DEFECTS_PER_PART: Final[int] = 2

# ---------------------------------------------------------------------------------------- process


@dataclass(frozen=True)
class ProcessState:
    """The injection-moulding machine's process parameters at one moment."""

    mould_temp_c: float
    injection_speed_mm_s: float
    hold_pressure_bar: float
    cycle_time_s: float
    return_water_temp_c: float

    UNITS: ClassVar[dict[str, str]] = {
        "mould_temp_c": "°C",
        "injection_speed_mm_s": "mm/s",
        "hold_pressure_bar": "bar",
        "cycle_time_s": "s",
        "return_water_temp_c": "°C",
    }
    SETPOINTS: ClassVar[dict[str, float]] = {
        "mould_temp_c": 60.0,
        "injection_speed_mm_s": 80.0,
        "hold_pressure_bar": 600.0,
        "cycle_time_s": 24.0,
        "return_water_temp_c": 35.0,
    }

    def as_params(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in PARAM_NAMES}

    @classmethod
    def nominal(cls) -> ProcessState:
        """The recipe set points."""
        return cls(**cls.SETPOINTS)


PARAM_NAMES: Final[tuple[str, ...]] = tuple(ProcessState.UNITS)
_DRIVEN: Final[tuple[str, ...]] = PARAM_NAMES[:4]  # the parameters the machine sets; the water follows


@dataclass(frozen=True)
class _ParamNoise:
    """Slow random walk (Ornstein-Uhlenbeck) around the set point plus white sensor noise."""

    sigma: float  # stationary standard deviation of the walk
    tau_s: float  # its correlation time
    sensor: float  # standard deviation of the sensor noise


@dataclass(frozen=True)
class _Excursion:
    """A disturbance of one parameter: ramp to ``magnitude``, hold, ramp back."""

    param: int
    rate_per_h: float
    magnitude: tuple[float, float]
    ramp_s: tuple[float, float]
    hold_s: tuple[float, float]
    recover_s: tuple[float, float]

    @property
    def longest_s(self) -> float:
        return self.ramp_s[1] + self.hold_s[1] + self.recover_s[1]

    def pulse(self, rng: np.random.Generator, period_s: float) -> FloatArray:
        ramp, hold, recover = (rng.uniform(*span) for span in (self.ramp_s, self.hold_s, self.recover_s))
        t = np.arange(0.0, ramp + hold + recover, period_s)
        shape = _smoothstep(0.0, ramp, t) * (1.0 - _smoothstep(ramp + hold, ramp + hold + recover, t))
        return rng.uniform(*self.magnitude) * shape


_NOISE: Final[tuple[_ParamNoise, ...]] = (
    _ParamNoise(sigma=0.8, tau_s=120.0, sensor=0.15),  # mould temperature
    _ParamNoise(sigma=1.5, tau_s=30.0, sensor=0.5),  # injection speed
    _ParamNoise(sigma=8.0, tau_s=60.0, sensor=2.0),  # hold pressure
    _ParamNoise(sigma=0.15, tau_s=300.0, sensor=0.05),  # cycle time
)
_EXCURSIONS: Final[tuple[_Excursion, ...]] = (
    _Excursion(0, 5.0, (-10.0, -5.0), (10.0, 25.0), (20.0, 60.0), (40.0, 120.0)),  # chiller hiccup
    _Excursion(1, 8.0, (10.0, 25.0), (1.0, 3.0), (4.0, 20.0), (2.0, 8.0)),  # injection speed spike
    _Excursion(2, 6.0, (60.0, 140.0), (2.0, 6.0), (10.0, 40.0), (5.0, 20.0)),  # hold pressure surge
    _Excursion(3, 6.0, (0.8, 2.5), (1.0, 3.0), (20.0, 90.0), (10.0, 30.0)),  # micro-stop
)


class ProcessSimulator:
    """A time series of :class:`ProcessState`, one sample every ``period_s`` from ``start``.

    Each parameter follows a slow random walk around its set point plus sensor noise; excursions
    arrive at random (per hour: 5 mould temperature dips of 5-10 °C, 8 injection speed spikes of
    +10-25 mm/s, 6 hold pressure surges of +60-140 bar, 6 micro-stops lengthening the cycle).
    The cooling water's return temperature is not driven by anything of its own: the mould heats
    the water, so it follows the mould temperature (0.6 °C per °C) plus its own slow wander.
    Drift ``"mould_cooling"``: the mould temperature falls linearly by ``cooling_c`` over
    ``drift_duration_s`` (then stays down), from ``drift_start_s`` into the run, so sink marks become
    more frequent.
    Samples are generated in fixed blocks from one random stream, so a value never depends on the
    order in which times are asked for.
    """

    BLOCK: ClassVar[int] = 2048

    def __init__(
        self,
        seed: int,
        start: datetime,
        period_s: float = 1.0,
        drift: str | None = None,
        drift_duration_s: float = 600.0,
        cooling_c: float = 10.0,
        drift_start_s: float = 0.0,
    ) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware (UTC)")
        if period_s <= 0 or drift_duration_s <= 0:
            raise ValueError("period_s and drift_duration_s must be positive")
        if drift is not None and drift not in DRIFT_SCENARIOS:
            raise ValueError(f"unknown drift {drift!r}; known: {', '.join(DRIFT_SCENARIOS)}")
        self.start = start.astimezone(UTC)
        self.period_s = period_s
        self.drift = drift
        self.drift_duration_s = drift_duration_s
        self.cooling_c = cooling_c
        self.drift_start_s = drift_start_s
        self._rng = np.random.default_rng(seed)
        self._setpoints = np.array([ProcessState.SETPOINTS[name] for name in _DRIVEN])
        self._walk = np.zeros(len(_DRIVEN))
        self._water_rng = np.random.default_rng([seed, 1])  # its own stream: the others stay as they were
        self._water_walk = 0.0
        longest = max(e.longest_s for e in _EXCURSIONS)
        self._carry = np.zeros((math.ceil(longest / period_s) + 2, len(_DRIVEN)))
        self._values = np.zeros((0, len(PARAM_NAMES)))

    def index_at(self, t: datetime) -> int:
        """Index of the sample in force at ``t`` (the last one taken at or before ``t``)."""
        if t.tzinfo is None:
            raise ValueError("t must be timezone-aware (UTC)")
        index = math.floor((t - self.start).total_seconds() / self.period_s + 1e-9)
        if index < 0:
            raise ValueError(f"{t.isoformat()} is before the simulation start {self.start.isoformat()}")
        return index

    def time_at(self, index: int) -> datetime:
        return self.start + timedelta(seconds=index * self.period_s)

    def state_at(self, t: datetime) -> ProcessState:
        return self._state(self.index_at(t))

    def samples(self, n: int) -> list[tuple[datetime, ProcessState]]:
        """The first ``n`` samples from ``start``."""
        return [(self.time_at(i), self._state(i)) for i in range(n)]

    def _state(self, index: int) -> ProcessState:
        while len(self._values) <= index:
            self._values = np.concatenate([self._values, self._next_block()])
        row = self._values[index]
        return ProcessState(**{name: round(float(row[i]), 3) for i, name in enumerate(PARAM_NAMES)})

    def _next_block(self) -> FloatArray:
        n, dt, rng = self.BLOCK, self.period_s, self._rng
        keep = np.array([math.exp(-dt / p.tau_s) for p in _NOISE])
        shocks = rng.standard_normal((n, len(_NOISE))) * np.array([p.sigma for p in _NOISE])
        shocks *= np.sqrt(1.0 - keep**2)
        walk = np.empty((n, len(_NOISE)))
        state = self._walk
        for i in range(n):
            state = keep * state + shocks[i]
            walk[i] = state
        self._walk = state

        excursions = np.zeros((n + len(self._carry), len(_NOISE)))
        excursions[: len(self._carry)] += self._carry
        for exc in _EXCURSIONS:
            for begin in np.sort(rng.integers(0, n, rng.poisson(exc.rate_per_h / 3600.0 * dt * n))):
                pulse = exc.pulse(rng, dt)
                span = excursions[begin : begin + len(pulse), exc.param]
                # a disturbance during another does not add to it: the stronger one holds
                span[:] = np.where(np.abs(pulse) > np.abs(span), pulse, span)
        self._carry = excursions[n:].copy()

        sensor = rng.standard_normal((n, len(_NOISE))) * np.array([p.sensor for p in _NOISE])
        values = self._setpoints + walk + excursions[:n] + sensor
        if self.drift == "mould_cooling":
            elapsed = (len(self._values) + np.arange(n)) * dt - self.drift_start_s
            values[:, 0] -= self.cooling_c * np.clip(elapsed / self.drift_duration_s, 0.0, 1.0)
        return np.column_stack([values, self._return_water(values[:, 0])])

    def _return_water(self, mould_temp: FloatArray) -> FloatArray:
        """The return water temperature: 0.6 °C per °C of mould temperature, a slow walk (σ 0.5 °C,
        τ 300 s) and sensor noise (0.2 °C); an effect of the mould temperature, never a cause."""
        n, rng = len(mould_temp), self._water_rng
        keep = math.exp(-self.period_s / 300.0)
        shocks = rng.standard_normal(n) * 0.5 * math.sqrt(1.0 - keep**2)
        walk = np.empty(n)
        state = self._water_walk
        for i in range(n):
            state = keep * state + shocks[i]
            walk[i] = state
        self._water_walk = state
        base = ProcessState.SETPOINTS["return_water_temp_c"]
        return (
            base + 0.6 * (mould_temp - ProcessState.SETPOINTS["mould_temp_c"]) + walk + rng.normal(0, 0.2, n)
        )


# ---------------------------------------------------------------------------------------- defects


def _logistic(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def defect_probabilities(state: ProcessState) -> dict[str, float]:
    """Probability that a part made under ``state`` shows each defect kind (independently).

    ============== ============================================= =================
    kind           probability                                   at the set points
    ============== ============================================= =================
    sink_mark      0.70 · σ((55.0 − mould_temp_c) / 1.6)         0.030 (60 °C)
    flash          0.60 · σ((injection_speed_mm_s − 92.0) / 3.8) 0.025 (80 mm/s)
    crack          0.50 · σ((hold_pressure_bar − 680.0) / 25.0)  0.020 (600 bar)
    scratch        0.040, constant (handling)                    0.040
    contamination  0.035, constant (dirty regrind)               0.035
    ============== ============================================= =================

    σ is the logistic function. ``cycle_time_s`` has no effect: a decoy for root-cause analysis;
    ``return_water_temp_c`` has none either but follows the mould temperature: a correlated decoy.
    At the set points 14 % of parts are NG (about 20 % over a run, excursions included); a mould
    temperature 7 °C low makes sink marks ~60 %, 100 mm/s makes flash ~53 %, 740 bar cracks ~46 %.
    """
    return {
        "sink_mark": 0.70 * _logistic((55.0 - state.mould_temp_c) / 1.6),
        "flash": 0.60 * _logistic((state.injection_speed_mm_s - 92.0) / 3.8),
        "scratch": 0.040,
        "contamination": 0.035,
        "crack": 0.50 * _logistic((state.hold_pressure_bar - 680.0) / 25.0),
    }


def ng_probability(state: ProcessState) -> float:
    """Probability that a part made under ``state`` has at least one defect."""
    return 1.0 - math.prod(1.0 - p for p in defect_probabilities(state).values())


def sample_defects(
    rng: np.random.Generator, probabilities: dict[str, float], max_defects: int = MAX_DEFECTS_PER_PART
) -> list[str]:
    """Draw each kind independently; if more than ``max_defects`` hit, keep the most likely ones."""
    kinds = list(probabilities)
    draws = rng.random(len(kinds))
    hits = [kind for draw, kind in zip(draws, kinds, strict=True) if draw < probabilities[kind]]
    return sorted(hits, key=lambda kind: -probabilities[kind])[:max_defects]


# ---------------------------------------------------------------------------------------- geometry


def _smoothstep(edge0: float, edge1: float, x: FloatArray) -> FloatArray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _rounded_box_sdf(u: FloatArray, v: FloatArray, half_w: float, half_h: float, radius: float) -> FloatArray:
    """Signed distance to a rounded rectangle centred at the origin (negative inside)."""
    qx = np.abs(u) - (half_w - radius)
    qy = np.abs(v) - (half_h - radius)
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    return outside + np.minimum(np.maximum(qx, qy), 0.0) - radius


@dataclass(frozen=True)
class _Recipe:
    """A part's shape in fractions of the image size, in its own (canonical) frame."""

    half_w: float
    half_h: float
    corner_r: float
    colour: tuple[float, float, float]
    screws: tuple[tuple[float, float], ...]
    ribs: bool


RECIPES: Final[dict[str, _Recipe]] = {
    "housing-A": _Recipe(
        0.36,
        0.30,
        0.09,
        (0.64, 0.65, 0.66),
        ((-0.285, -0.225), (0.285, -0.225), (-0.285, 0.225), (0.285, 0.225)),
        ribs=True,
    ),
    "cap-B": _Recipe(
        0.33,
        0.33,
        0.33,
        (0.30, 0.42, 0.60),
        ((0.0, -0.24), (0.208, 0.12), (-0.208, 0.12)),
        ribs=False,
    ),
}


@dataclass(frozen=True)
class _PartGeometry:
    """Where the part lies in the image: centre, rotation and scale (pixels per image size)."""

    recipe: _Recipe
    cx: float
    cy: float
    angle: float
    scale: float
    px: float  # pixels per pixel of a 256-px image: every length below is multiplied by it

    @staticmethod
    def sample(rng: np.random.Generator, recipe: _Recipe, size: int) -> _PartGeometry:
        px = size / 256.0
        cx, cy = size / 2.0 + rng.uniform(-3.0, 3.0, 2) * px
        angle = math.radians(rng.uniform(-3.0, 3.0))
        return _PartGeometry(recipe, float(cx), float(cy), angle, size * rng.uniform(0.98, 1.02), px)

    @property
    def half_w(self) -> float:
        return self.recipe.half_w * self.scale

    @property
    def half_h(self) -> float:
        return self.recipe.half_h * self.scale

    @property
    def hole_r(self) -> float:
        return 0.06 * self.scale

    @property
    def boss_r(self) -> float:
        return 0.15 * self.scale

    @property
    def screw_r(self) -> float:
        return 0.028 * self.scale

    @property
    def screws(self) -> list[tuple[float, float]]:
        return [(x * self.scale, y * self.scale) for x, y in self.recipe.screws]

    def canonical(self, x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
        dx, dy = x - self.cx, y - self.cy
        c, s = math.cos(self.angle), math.sin(self.angle)
        return dx * c + dy * s, -dx * s + dy * c

    def to_image(self, u: float, v: float) -> tuple[float, float]:
        c, s = math.cos(self.angle), math.sin(self.angle)
        return self.cx + u * c - v * s, self.cy + u * s + v * c

    def outer_sdf(self, u: FloatArray, v: FloatArray) -> FloatArray:
        r = self.recipe.corner_r * self.scale
        return _rounded_box_sdf(u, v, self.half_w, self.half_h, r)

    def clearance(self, u: FloatArray, v: FloatArray) -> FloatArray:
        """Distance to the nearest edge of the material (outline, centre hole, screw holes)."""
        distance = np.minimum(-self.outer_sdf(u, v), np.hypot(u, v) - self.hole_r)
        for sx, sy in self.screws:
            distance = np.minimum(distance, np.hypot(u - sx, v - sy) - self.screw_r)
        return distance

    def boundary_point(self, phi: float) -> tuple[float, float]:
        """The point of the outline in direction ``phi`` from the centre (canonical frame)."""
        lo, hi = 0.0, 2.0 * max(self.half_w, self.half_h)
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            inside = self.outer_sdf(np.array(mid * math.cos(phi)), np.array(mid * math.sin(phi))) < 0
            lo, hi = (mid, hi) if inside else (lo, mid)
        return lo * math.cos(phi), lo * math.sin(phi)


# ---------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class PlantedDefect:
    """One defect drawn on a part; ``bbox`` is (x, y, width, height) in pixels, ``area`` in pixels."""

    kind: str
    bbox: tuple[int, int, int, int]
    area: int


@dataclass
class _Layers:
    """What a part image is composed from. Defects edit ``height``, ``albedo``, ``alpha``, ``gloss``."""

    xs: FloatArray
    ys: FloatArray
    u: FloatArray
    v: FloatArray
    sdf: FloatArray  # signed distance to the part outline
    clearance: FloatArray  # distance to the nearest material edge (negative off the part)
    height: FloatArray  # surface height in pixels (drives the shading)
    albedo: FloatArray  # (H, W, 3) colour of the part material
    alpha: FloatArray  # coverage of the part material
    gloss: FloatArray  # specular strength
    fine: FloatArray  # unit fine-grained noise, reused for irregular defect outlines
    belt: FloatArray  # (H, W, 3) conveyor under the part, shadow included
    light: tuple[float, float, float]
    illumination: FloatArray  # smooth lighting gradient and vignette
    sensor: FloatArray  # (H, W, 3) sensor noise


def _noise(rng: np.random.Generator, size: int, sigma_x: float, sigma_y: float | None = None) -> FloatArray:
    """Gaussian-blurred white noise with unit standard deviation."""
    white = rng.standard_normal((size, size)).astype(np.float32)
    blurred = cv2.GaussianBlur(white, (0, 0), sigmaX=sigma_x, sigmaY=sigma_y or sigma_x)
    return np.asarray(blurred / (blurred.std() + 1e-9), dtype=np.float32)


def _base_layers(rng: np.random.Generator, geo: _PartGeometry, size: int) -> _Layers:
    px = geo.px
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    u, v = geo.canonical(xs, ys)
    sdf, r = geo.outer_sdf(u, v), np.hypot(u, v)
    body = np.clip(0.5 - sdf, 0.0, 1.0)
    open_ = np.clip(r - geo.hole_r + 0.5, 0.0, 1.0)  # 0 where the belt shows through a hole

    height = 5.0 * px * _smoothstep(0.0, 5.0 * px, -sdf)  # bevelled outline
    height += 2.5 * px * _smoothstep(0.0, 3.0 * px, geo.boss_r - r)  # raised boss
    height *= _smoothstep(0.0, 2.5 * px, r - geo.hole_r)
    for sx, sy in geo.screws:
        d = np.hypot(u - sx, v - sy)
        open_ *= np.clip(d - geo.screw_r + 0.5, 0.0, 1.0)
        height *= _smoothstep(0.0, 2.0 * px, d - geo.screw_r)
    if geo.recipe.ribs:
        for offset in (-0.055, 0.0, 0.055):  # three grip ribs right of the boss
            rib = _rounded_box_sdf(
                u - 0.234 * geo.scale, v - offset * geo.scale, 0.04 * geo.scale, 0.008 * geo.scale, px
            )
            height += 1.5 * px * _smoothstep(0.0, 1.5 * px, -rib)
    fine = _noise(rng, size, 0.8)
    rings = np.sin(2.0 * math.pi * r / (2.6 * px) + rng.uniform(0.0, 2.0 * math.pi))
    height += (0.025 * px * fine + 0.015 * px * rings) * _smoothstep(2.0 * px, 6.0 * px, -sdf)

    brightness = rng.uniform(0.97, 1.03)
    mottling = 1.0 + 0.03 * _noise(rng, size, 12.0 * px)
    albedo = np.array(geo.recipe.colour, np.float32) * brightness * mottling[..., None]
    belt_tone = 0.17 * (1.0 + 0.09 * _noise(rng, size, 9.0 * px, 0.7 * px) + 0.04 * _noise(rng, size, 0.7))
    shift = np.array([[1.0, 0.0, 3.0 * px], [0.0, 1.0, 4.0 * px]], np.float32)  # shadow offset
    cast = cv2.GaussianBlur(cv2.warpAffine(body.astype(np.float32), shift, (size, size)), (0, 0), 3.0 * px)
    belt_tone *= (1.0 - 0.5 * cast) * (1.0 - 0.45 * body * (1.0 - open_))
    belt = belt_tone[..., None] * np.array([1.0, 1.0, 1.06], np.float32)

    lx, ly = -0.55 + rng.uniform(-0.05, 0.05), -0.6 + rng.uniform(-0.05, 0.05)
    norm = math.sqrt(lx * lx + ly * ly + 0.75 * 0.75)
    phi = -2.3 + rng.uniform(-0.2, 0.2)
    cx, cy = (xs - size / 2.0) / size, (ys - size / 2.0) / size
    illumination = 1.0 + rng.uniform(0.06, 0.12) * (cx * math.cos(phi) + cy * math.sin(phi))
    illumination -= 0.25 * (cx * cx + cy * cy)
    return _Layers(
        xs=xs,
        ys=ys,
        u=u,
        v=v,
        sdf=sdf,
        clearance=geo.clearance(u, v),
        height=height,
        albedo=albedo,
        alpha=body * open_,
        gloss=np.ones((size, size), np.float32),
        fine=fine,
        belt=belt,
        light=(lx / norm, ly / norm, 0.75 / norm),
        illumination=illumination,
        sensor=rng.normal(0.0, 0.005, (size, size, 3)).astype(np.float32),
    )


def _compose(layers: _Layers) -> ImageArray:
    gy, gx = np.gradient(layers.height)
    nz = 1.0 / np.sqrt(1.0 + gx * gx + gy * gy)
    nx, ny = -gx * nz, -gy * nz
    lx, ly, lz = layers.light
    diffuse = 0.3 + 0.7 * np.clip(nx * lx + ny * ly + nz * lz, 0.0, None) / lz
    hx, hy, hz = lx, ly, lz + 1.0
    hn = math.sqrt(hx * hx + hy * hy + hz * hz)
    spec = 0.25 * np.clip((nx * hx + ny * hy + nz * hz) / hn, 0.0, 1.0) ** 40 * layers.gloss
    part = layers.albedo * diffuse[..., None] + spec[..., None]
    alpha = layers.alpha[..., None]
    image = (alpha * part + (1.0 - alpha) * layers.belt) * layers.illumination[..., None] + layers.sensor
    return np.asarray(np.clip(image, 0.0, 1.0) * 255.0 + 0.5, dtype=np.uint8)


def _surface_point(rng: np.random.Generator, geo: _PartGeometry, min_clearance: float) -> tuple[float, float]:
    """A random image point on the part at least ``min_clearance`` from every material edge."""
    need = min_clearance
    while True:
        for _ in range(50):
            u, v = rng.uniform(-geo.half_w, geo.half_w), rng.uniform(-geo.half_h, geo.half_h)
            if float(geo.clearance(np.array(u), np.array(v))) >= need:
                return geo.to_image(u, v)
        need *= 0.8


def _stroke(size: int, polylines: Sequence[tuple[Sequence[tuple[float, float]], int]]) -> FloatArray:
    """Anti-aliased polylines (points, thickness) as a 0..1 weight image; faint fringes dropped."""
    canvas = np.zeros((size, size), np.uint8)
    for points, thickness in polylines:
        fixed = [(round(x * 16), round(y * 16)) for x, y in points]
        for a, b in itertools.pairwise(fixed):
            cv2.line(canvas, a, b, 255, thickness, cv2.LINE_AA, shift=4)
    weight = canvas.astype(np.float32) / 255.0
    weight[weight < 0.15] = 0.0
    return weight


def _plant_sink_mark(rng: np.random.Generator, geo: _PartGeometry, layers: _Layers) -> BoolArray:
    """A soft elliptical depression with a faint raised rim, slightly duller than the surface."""
    a = max(4.0, rng.uniform(8.0, 16.0) * geo.px)
    b, theta, depth = a * rng.uniform(0.5, 0.85), rng.uniform(0.0, math.pi), a * rng.uniform(0.15, 0.24)
    x0, y0 = _surface_point(rng, geo, 1.3 * a + 4.0 * geo.px)
    dx, dy = layers.xs - x0, layers.ys - y0
    p = (dx * math.cos(theta) + dy * math.sin(theta)) / a
    q = (-dx * math.sin(theta) + dy * math.cos(theta)) / b
    rho = np.hypot(p, q)
    support = rho < 1.25
    bowl = np.where(rho < 1.0, (1.0 - rho**2) ** 2, 0.0)[support]
    rim = np.where(np.abs(rho - 1.05) < 0.2, (1.0 - ((rho - 1.05) / 0.2) ** 2) ** 2, 0.0)[support]
    layers.height[support] += depth * (0.25 * rim - bowl)
    layers.albedo[support] *= (1.0 - 0.12 * bowl)[:, None]
    layers.gloss[support] *= 1.0 - 0.5 * bowl
    # the shading reads height gradients, which reach one pixel beyond the changed heights
    grown = cv2.dilate(support.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    return np.asarray(grown & (layers.alpha > 0))


def _plant_flash(rng: np.random.Generator, geo: _PartGeometry, layers: _Layers) -> BoolArray:
    """Thin, irregular, slightly translucent excess material along a stretch of the outline."""
    phi0 = rng.uniform(-math.pi, math.pi)
    span = rng.uniform(25.0, 60.0) * geo.px / (0.5 * (geo.half_w + geo.half_h))
    t = (np.arctan2(layers.v, layers.u) - phi0 + math.pi) % (2.0 * math.pi) - math.pi
    t = t / span + 0.5
    along = (t > 0.0) & (t < 1.0) & (layers.sdf > -1.0)
    knots = rng.uniform(0.3, 1.0, int(rng.integers(10, 18)))
    jagged = np.interp(np.clip(t, 0.0, 1.0), np.linspace(0.0, 1.0, len(knots)), knots)
    width = max(2.5, rng.uniform(4.0, 8.0) * geo.px) * np.sqrt(np.clip(np.sin(math.pi * t), 0.0, 1.0))
    cover = np.where(along, np.clip(width * jagged - layers.sdf + 0.5, 0.0, 1.0), 0.0) * 0.9
    support = cover > layers.alpha + 1e-6
    layers.alpha[support] = cover[support]
    layers.albedo[support] *= 1.08
    return support


def _plant_scratch(rng: np.random.Generator, geo: _PartGeometry, layers: _Layers) -> BoolArray:
    """A thin bright (stress-whitened) or dark polyline on the top surface."""
    x, y = _surface_point(rng, geo, 6.0 * geo.px)
    segments = int(rng.integers(2, 5))
    step = rng.uniform(35.0, 90.0) * geo.px / segments
    angle, points = rng.uniform(0.0, 2.0 * math.pi), [(x, y)]
    for _ in range(segments):
        angle += rng.normal(0.0, 0.25)
        x, y = x + step * math.cos(angle), y + step * math.sin(angle)
        points.append((x, y))
    thickness = 1 if geo.px < 1.5 or rng.random() < 0.6 else 2
    weight = _stroke(len(layers.xs), [(points, thickness)])
    weight[layers.clearance < 2.0 * geo.px] = 0.0
    support = weight > 0
    w = weight[support][:, None]
    if rng.random() < 0.6:
        layers.albedo[support] += (0.97 - layers.albedo[support]) * 0.5 * w
    else:
        layers.albedo[support] *= 1.0 - 0.4 * w
    layers.gloss[support] *= 1.0 - 0.6 * weight[support]
    return support


def _plant_contamination(rng: np.random.Generator, geo: _PartGeometry, layers: _Layers) -> BoolArray:
    """One to four small dark specks with irregular outlines, close together."""
    x0, y0 = _surface_point(rng, geo, 12.0 * geo.px)
    cover = np.zeros_like(layers.height)
    for i in range(int(rng.integers(1, 5))):
        ox, oy = rng.normal(0.0, 5.0 * geo.px, 2) if i else (0.0, 0.0)
        radius = max(1.3, rng.uniform(2.0, 4.5) * geo.px * (1.0 if i == 0 else 0.7))
        ratio, theta = rng.uniform(0.6, 1.0), rng.uniform(0.0, math.pi)
        dx, dy = layers.xs - x0 - ox, layers.ys - y0 - oy
        p = (dx * math.cos(theta) + dy * math.sin(theta)) / radius
        q = (-dx * math.sin(theta) + dy * math.cos(theta)) / (radius * ratio)
        edge = 1.0 + 0.2 * np.clip(layers.fine, -2.0, 2.0)
        cover = np.maximum(cover, np.clip((edge - np.hypot(p, q)) * radius, 0.0, 1.0))
    cover[(cover < 0.1) | (layers.alpha <= 0)] = 0.0
    support = cover > 0
    c = cover[support][:, None]
    layers.albedo[support] = layers.albedo[support] * (1.0 - c) + np.array([0.10, 0.09, 0.08], np.float32) * c
    layers.gloss[support] *= 1.0 - 0.7 * cover[support]
    return support


def _plant_crack(rng: np.random.Generator, geo: _PartGeometry, layers: _Layers) -> BoolArray:
    """A dark jagged line running in from the outline, tapering, sometimes with a branch."""
    phi = rng.uniform(-math.pi, math.pi)
    bu, bv = geo.boundary_point(phi)
    base = math.atan2(-bv, -bu) + rng.normal(0.0, 0.3)
    u, v = bu - 1.5 * math.cos(base), bv - 1.5 * math.sin(base)
    steps, step = int(rng.integers(7, 12)), max(2.0, rng.uniform(3.5, 6.0) * geo.px)
    angle, path = base, [(u, v)]
    for _ in range(steps):
        angle = base + 0.5 * (angle - base) + rng.normal(0.0, 0.55)
        u, v = u + step * math.cos(angle), v + step * math.sin(angle)
        path.append((u, v))
    image_path = [geo.to_image(pu, pv) for pu, pv in path]
    wide = 2 if geo.px >= 0.75 else 1
    split = max(2, int(0.4 * steps))
    strokes = [(image_path[: split + 1], wide), (image_path[split:], 1)]
    if rng.random() < 0.5:
        k = int(rng.integers(split, steps))
        bu, bv = path[k]
        turn = base + rng.choice([-0.7, 0.7])
        branch = [(bu, bv)]
        for _ in range(int(rng.integers(2, 5))):
            bu, bv = bu + step * math.cos(turn), bv + step * math.sin(turn)
            turn += rng.normal(0.0, 0.5)
            branch.append((bu, bv))
        strokes.append(([geo.to_image(pu, pv) for pu, pv in branch], 1))
    weight = _stroke(len(layers.xs), strokes)
    weight[layers.alpha <= 0] = 0.0
    support = weight > 0
    layers.albedo[support] *= (1.0 - 0.8 * weight[support])[:, None]
    layers.gloss[support] *= 1.0 - weight[support]
    return support


_PLANTERS: Final[dict[str, Callable[[np.random.Generator, _PartGeometry, _Layers], BoolArray]]] = {
    "sink_mark": _plant_sink_mark,
    "flash": _plant_flash,
    "scratch": _plant_scratch,
    "contamination": _plant_contamination,
    "crack": _plant_crack,
}


def _planted(kind: str, mask: BoolArray) -> PlantedDefect:
    ys, xs = np.nonzero(mask)
    x, y = int(xs.min()), int(ys.min())
    return PlantedDefect(kind, (x, y, int(xs.max()) - x + 1, int(ys.max()) - y + 1), int(mask.sum()))


def render_part(
    rng: np.random.Generator, defects: Sequence[str], size: int = 256, recipe: str = "housing-A"
) -> tuple[ImageArray, BoolArray, list[PlantedDefect]]:
    """An RGB image of one part on the conveyor, the mask of its defect pixels and the defects.

    The part itself (pose, texture, lighting, noise) depends only on the first two numbers drawn
    from ``rng``, so the same generator state renders the same part with or without defects.
    The mask holds exactly the pixels the defects changed.
    """
    unknown = [kind for kind in defects if kind not in _PLANTERS]
    if unknown:
        raise ValueError(f"unknown defect kinds {unknown}; known: {', '.join(DEFECT_KINDS)}")
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
    if size < 32:
        raise ValueError("size must be at least 32 pixels")
    base_rng, defect_rng = (np.random.default_rng(int(s)) for s in rng.integers(0, 2**63, 2))
    geo = _PartGeometry.sample(base_rng, RECIPES[recipe], size)
    layers = _base_layers(base_rng, geo, size)
    mask = np.zeros((size, size), dtype=bool)
    planted: list[PlantedDefect] = []
    for kind in defects:
        for _ in range(10):  # a draw that lands nowhere visible changes nothing: draw again
            defect_mask = _PLANTERS[kind](defect_rng, geo, layers)
            if defect_mask.any():
                planted.append(_planted(kind, defect_mask))
                mask |= defect_mask
                break
    return _compose(layers), mask, planted


# ---------------------------------------------------------------------------------------- the line


@dataclass(frozen=True, eq=False)
class SyntheticPart:
    """One frame of the synthetic line: a part, its ground truth and the process in force."""

    part_id: str
    image: ImageArray  # (H, W, 3) RGB uint8
    mask: BoolArray  # (H, W) true on defect pixels
    defects: list[PlantedDefect]
    captured_at: datetime  # timezone-aware UTC
    camera_id: str
    process: ProcessState
    line_id: str
    station_id: str
    recipe: str

    @property
    def defect_kinds(self) -> list[str]:
        return [d.kind for d in self.defects]

    @property
    def is_defective(self) -> bool:
        return bool(self.defects)


class SyntheticLine:
    """A moulding line with one inspection station: parts every ``frame_period_s``, cameras in turn.

    The process is sampled every second (``self.process``); each part gets the defects drawn from
    :func:`defect_probabilities` of the state in force at its capture time. ``good_parts`` and
    ``parts`` draw from separate random streams, so one never changes what the other returns.
    ``start`` defaults to :data:`DEFAULT_START` so that a seed reproduces a run exactly; a live demo
    passes ``datetime.now(UTC)``.
    """

    def __init__(
        self,
        seed: int = 0,
        line_id: str = "line-1",
        station_id: str = "station-1",
        camera_ids: Sequence[str] = ("cam-1",),
        recipe: str = "housing-A",
        start: datetime | None = None,
        frame_period_s: float = 0.5,
        drift: str | None = None,
        size: int = 256,
        drift_duration_s: float = 600.0,
        machine_id: str = "imm-1",
    ) -> None:
        if not camera_ids:
            raise ValueError("camera_ids must name at least one camera")
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
        if frame_period_s <= 0:
            raise ValueError("frame_period_s must be positive")
        self.line_id, self.station_id, self.recipe = line_id, station_id, recipe
        self.camera_ids, self.machine_id = tuple(camera_ids), machine_id
        self.frame_period_s, self.size = frame_period_s, size
        process_seq, good_seq, part_seq = np.random.SeedSequence(seed).spawn(3)
        self.process = ProcessSimulator(
            int(process_seq.generate_state(1)[0]), start or DEFAULT_START, 1.0, drift, drift_duration_s
        )
        self.start = self.process.start
        self._good_rng = np.random.default_rng(good_seq)
        self._part_rng = np.random.default_rng(part_seq)
        self._next_part = 0

    def capture_time(self, index: int) -> datetime:
        return self.start + timedelta(seconds=index * self.frame_period_s)

    def good_parts(self, n: int) -> list[ImageArray]:
        """``n`` defect-free images for training (later calls continue the stream)."""
        return [render_part(self._good_rng, [], self.size, self.recipe)[0] for _ in range(n)]

    def parts(self, n: int | None = None) -> Iterator[SyntheticPart]:
        """The next ``n`` parts off the line (forever when ``n`` is None)."""
        produced = 0
        while n is None or produced < n:
            index = self._next_part
            self._next_part += 1
            produced += 1
            captured_at = self.capture_time(index)
            state = self.process.state_at(captured_at)
            kinds = sample_defects(self._part_rng, defect_probabilities(state))
            image, mask, planted = render_part(self._part_rng, kinds, self.size, self.recipe)
            yield SyntheticPart(
                part_id=f"{self.line_id}-{index:06d}",
                image=image,
                mask=mask,
                defects=planted,
                captured_at=captured_at,
                camera_id=self.camera_ids[index % len(self.camera_ids)],
                process=state,
                line_id=self.line_id,
                station_id=self.station_id,
                recipe=self.recipe,
            )

    def __iter__(self) -> Iterator[SyntheticPart]:
        return self.parts()


# ---------------------------------------------------------------------------------------- dataset


def _write_png(path: Path, image: ImageArray) -> None:
    data = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    if not cv2.imwrite(str(path), data):
        raise OSError(f"could not write {path}")


def write_dataset(
    root: str | Path,
    n_train: int,
    n_test: int,
    seed: int = 0,
    *,
    size: int = 256,
    drift: str | None = None,
    category: str = "synthetic",
) -> Path:
    """Write an MVTec AD category plus the line's logs; returns ``root/category``.

    ``train/good`` holds defect-free parts. ``test/`` holds ``n_test`` consecutive parts off the
    line, in ``good``, the defect kind's folder, or ``combined`` when a part has two kinds, with
    masks (0/255) in ``ground_truth/<folder>/<stem>_mask.png``. ``process.csv`` (ts, machine_id,
    parameters; one row a second over the test run) and ``parts.csv`` (file, part_id, captured_at,
    camera, defects separated by ``;``) let the test parts be joined to the process as of capture.
    """
    line = SyntheticLine(seed=seed, drift=drift, size=size)
    base = Path(root) / category
    (base / "train" / "good").mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(line.good_parts(n_train)):
        _write_png(base / "train" / "good" / f"{i:03d}.png", image)

    counts: dict[str, int] = {}
    rows: list[dict[str, str]] = []
    last_capture = line.start
    for part in line.parts(n_test):
        kinds = sorted(set(part.defect_kinds))
        folder = "good" if not kinds else kinds[0] if len(kinds) == 1 else "combined"
        stem = f"{counts.get(folder, 0):03d}"
        counts[folder] = counts.get(folder, 0) + 1
        (base / "test" / folder).mkdir(parents=True, exist_ok=True)
        _write_png(base / "test" / folder / f"{stem}.png", part.image)
        if kinds:
            (base / "ground_truth" / folder).mkdir(parents=True, exist_ok=True)
            _write_png(base / "ground_truth" / folder / f"{stem}_mask.png", part.mask.astype(np.uint8) * 255)
        rows.append(
            {
                "file": f"test/{folder}/{stem}.png",
                "part_id": part.part_id,
                "captured_at": part.captured_at.isoformat(timespec="milliseconds"),
                "camera": part.camera_id,
                "defects": ";".join(part.defect_kinds),
            }
        )
        last_capture = part.captured_at

    with (base / "parts.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "part_id", "captured_at", "camera", "defects"])
        writer.writeheader()
        writer.writerows(rows)
    with (base / "process.csv").open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["ts", "machine_id", *PARAM_NAMES])
        for ts, state in line.process.samples(line.process.index_at(last_capture) + 1):
            stamp = ts.isoformat(timespec="milliseconds")
            out.writerow([stamp, line.machine_id, *state.as_params().values()])
    return base
