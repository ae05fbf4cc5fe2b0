"""Synthetic training volumes: varied objects, distractors and artefacts, with exact labels.

Richer than :mod:`napari_samed2.io.sample` (one fixed layout, for demos): every case draws its
shape, spacing, anatomy and objects from a ``np.random.Generator`` passed in, never from global
state. A case holds

* a body (an elliptic cross-section that changes slowly along z) with a brighter rim, a few
  unlabelled background "organs" and a smooth tissue texture;
* 1..n labelled objects (label values 1..n, each non-empty), each one of
  ``"ellipsoid"`` (an oblique, drifting organ that starts and ends inside the volume or at its
  ends), ``"tube"`` (a curved vessel of varying calibre, through all or part of the slices),
  ``"lesion"`` (a thresholded blob of smooth noise that appears, grows, shrinks and vanishes,
  with ragged edges and sometimes satellite islands) and ``"split lesion"`` (two noisy lobes
  that share one slice range and drift apart, so one component becomes two);
* for each object a contrast of its own, brighter or darker than the tissue around it;
* distractors: unlabelled blobs and tubes with the intensity of one of the objects;
* in-plane blur (partial volume), a smooth multiplicative bias field, Gaussian or Rician
  noise, a random intensity scale and offset (so intensity normalisation is exercised);
* a chosen fraction of corrupted slices (``"noise"``: heavy noise, ``"streaks"``: bright and
  dark lines through a point, as metal gives in CT, ``"dropped"``: a blank slice). Their
  indices are returned; the labels there keep the true anatomy, as an annotator would.

Seeds. :func:`synthetic_case` takes a generator. :func:`synthetic_stream` yields an endless
stream from an integer seed: case ``k`` of stream ``seed`` is
``synthetic_case(np.random.default_rng([seed, k]))``. Streams with seeds below
:data:`HELD_OUT_SEED` (10,000) are for training; seeds from 10,000 on are **held out**
(validation and test) and never used in training: ``synthetic_stream`` refuses them unless
``held_out=True``, and refuses training seeds when ``held_out=True``. Different seeds give
different generator states, so held-out cases cannot coincide with training ones.
:func:`held_out_cases` gives the first cases of held-out stream 10,000.

Speed: a (32, 256, 256) case takes 0.16-0.24 s (measured on a busy 2-core machine).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from napari_samed2.errors import VolumeError

HELD_OUT_SEED = 10_000
OBJECT_KINDS = ("ellipsoid", "tube", "lesion", "split lesion")
CORRUPTION_KINDS = ("noise", "streaks", "dropped")
MIN_SHAPE = (8, 32, 32)
_MIN_ISLAND = 12  # voxels

Range = tuple[float, float]


@dataclass(frozen=True)
class SyntheticConfig:
    """What :func:`synthetic_case` draws from. Ranges are inclusive ``(low, high)``.

    ``depth``/``height``/``width``: slices, rows and columns; ``objects``: how many labelled
    objects; ``distractors``: how many unlabelled look-alikes; ``corrupted_fraction``: the
    share of slices corrupted (rounded to whole slices); ``kinds``: the object kinds to draw
    from. Bad values raise :class:`~napari_samed2.errors.VolumeError` when the config is made.
    """

    depth: tuple[int, int] = (24, 48)
    height: tuple[int, int] = (128, 256)
    width: tuple[int, int] = (128, 256)
    objects: tuple[int, int] = (1, 4)
    distractors: tuple[int, int] = (1, 3)
    corrupted_fraction: float = 0.05
    kinds: tuple[str, ...] = OBJECT_KINDS
    corruption_kinds: tuple[str, ...] = CORRUPTION_KINDS
    slice_spacing_mm: Range = (1.0, 5.0)
    pixel_spacing_mm: Range = (0.5, 1.2)
    noise: Range = (0.02, 0.10)  # standard deviation, as a share of the tissue intensity
    blur_px: Range = (0.5, 1.5)
    bias: Range = (0.05, 0.35)  # peak of the log bias field

    @classmethod
    def fixed_shape(cls, shape: tuple[int, int, int], **options) -> SyntheticConfig:
        """A config whose cases all have ``shape``."""
        if len(shape) != 3:
            raise VolumeError(f"shape must be (slices, rows, columns), got {shape}")
        return cls(**{name: (n, n) for name, n in zip(("depth", "height", "width"), shape)}, **options)

    def __post_init__(self) -> None:
        for name, minimum in zip(("depth", "height", "width"), MIN_SHAPE):
            low, high = getattr(self, name)
            if not minimum <= low <= high:
                raise VolumeError(
                    f"{name} must be a range (low, high) with {minimum} <= low <= high, got "
                    f"{(low, high)}: smaller volumes cannot hold the objects"
                )
        low, high = self.objects
        if not 1 <= low <= high <= 255:
            raise VolumeError(f"objects must be a range with 1 <= low <= high <= 255 (uint8 labels), got {self.objects}")
        low, high = self.distractors
        if not 0 <= low <= high:
            raise VolumeError(f"distractors must be a range with 0 <= low <= high, got {self.distractors}")
        if not 0.0 <= self.corrupted_fraction <= 1.0:
            raise VolumeError(f"corrupted_fraction must lie in [0, 1], got {self.corrupted_fraction}")
        for name, known in (("kinds", OBJECT_KINDS), ("corruption_kinds", CORRUPTION_KINDS)):
            chosen = getattr(self, name)
            unknown = set(chosen) - set(known)
            if not chosen or unknown:
                raise VolumeError(f"{name} must be a non-empty selection of {known}, got {chosen}")
        for name in ("slice_spacing_mm", "pixel_spacing_mm", "noise", "blur_px", "bias"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise VolumeError(f"{name} must be a range with 0 <= low <= high, got {(low, high)}")


@dataclass(frozen=True, eq=False)
class SyntheticCase:
    """One generated volume.

    ``image`` float32 (z, y, x); ``labels`` uint8, 0 background and 1..n objects, all present;
    ``spacing`` in mm (z, y, x); ``corrupted``: sorted indices of the corrupted slices and
    ``corruption_kinds`` what happened to each; ``kinds[i - 1]``: the kind of label ``i``;
    ``distractors``: boolean, the unlabelled voxels painted with an object's intensity.
    """

    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    corrupted: tuple[int, ...]
    corruption_kinds: tuple[str, ...]
    kinds: tuple[str, ...]
    distractors: np.ndarray

    @property
    def num_objects(self) -> int:
        return len(self.kinds)

    def promptable_labels(self, min_voxels: int = 50) -> np.ndarray:
        """``labels`` plus each distractor blob of at least ``min_voxels`` as an object of its
        own (ids after the labelled ones). For training a promptable model: if look-alikes are
        never targets, boxes always frame "the labelled thing" and the model learns to find
        salient blobs instead of reading the prompt (measured: two boxes on two objects of one
        slice gave masks overlapping 0.83-1.0; with distractors as targets, 0.0-0.19)."""
        labels = self.labels.astype(np.int32)
        components, count = ndimage.label(self.distractors & (labels == 0))
        sizes = ndimage.sum_labels(np.ones_like(components), components, index=np.arange(1, count + 1))
        next_id = self.num_objects + 1
        for component in np.flatnonzero(sizes >= min_voxels) + 1:
            labels[components == component] = next_id
            next_id += 1
        return labels


def synthetic_case(rng: np.random.Generator, config: SyntheticConfig | None = None) -> SyntheticCase:
    """Draw one case from ``rng`` (the same generator state gives the same arrays)."""
    if not isinstance(rng, np.random.Generator):
        raise VolumeError(f"rng must be a numpy Generator (np.random.default_rng(seed)), not {type(rng).__name__}")
    config = config or SyntheticConfig()
    shape = tuple(int(rng.integers(low, high + 1)) for low, high in (config.depth, config.height, config.width))
    return _Builder(rng, config, shape).build()


def synthetic_stream(
    seed: int, config: SyntheticConfig | None = None, *, held_out: bool = False
) -> Iterator[SyntheticCase]:
    """Cases ``synthetic_case(np.random.default_rng([seed, k]), config)`` for k = 0, 1, ...

    Training streams use ``0 <= seed < HELD_OUT_SEED``; held-out streams (``held_out=True``)
    use ``seed >= HELD_OUT_SEED``. Either refuses the other range.
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise VolumeError(f"seed must be a non-negative integer, got {seed!r}")
    if held_out and seed < HELD_OUT_SEED:
        raise VolumeError(f"held-out streams use seeds >= {HELD_OUT_SEED}, got {seed}")
    if not held_out and seed >= HELD_OUT_SEED:
        raise VolumeError(
            f"seeds >= {HELD_OUT_SEED} are held out and never used in training; pass "
            f"held_out=True to draw validation or test cases, or use a seed below {HELD_OUT_SEED}"
        )
    config = config or SyntheticConfig()
    for k in itertools.count():
        yield synthetic_case(np.random.default_rng([int(seed), k]), config)


def held_out_cases(count: int, config: SyntheticConfig | None = None, seed: int = HELD_OUT_SEED) -> list[SyntheticCase]:
    """The first ``count`` cases of held-out stream ``seed`` (default 10,000)."""
    return list(itertools.islice(synthetic_stream(seed, config, held_out=True), count))


def held_out_eval_cases(count: int, config: SyntheticConfig | None = None, seed: int = HELD_OUT_SEED) -> list:
    """:func:`held_out_cases` as evaluation cases named ``held-out <seed>/<k>``, as the demo
    model's evaluation and the benchmarks measure it."""
    from napari_samed2.evaluation import EvalCase

    return [
        EvalCase.from_arrays(case.image, case.labels, case.spacing, name=f"held-out {seed}/{k}")
        for k, case in enumerate(held_out_cases(count, config, seed))
    ]


# ---------------------------------------------------------------------------------------------
class _Builder:
    """Draws one case; the methods share the generator, shape and coordinate grids."""

    def __init__(self, rng: np.random.Generator, config: SyntheticConfig, shape: tuple[int, int, int]):
        self.rng, self.config, self.shape = rng, config, shape
        self.size = min(shape[1:])  # in-plane scale of everything, in pixels
        self.z, self.y, self.x = (np.arange(n, dtype=np.float32) for n in shape)
        self.labels = np.zeros(shape, np.uint8)
        self.distractors = np.zeros(shape, bool)
        self.tissue = np.zeros(shape, np.float32)  # relative intensity, 1 = soft tissue

    # ---- the whole case
    def build(self) -> SyntheticCase:
        rng, config = self.rng, self.config
        spacing_z = round(float(rng.uniform(*config.slice_spacing_mm)), 2)
        spacing_xy = round(float(rng.uniform(*config.pixel_spacing_mm)), 3)
        self._body()
        kinds, contrasts = self._objects()
        self._add_distractors(contrasts)
        image = self._render()
        corrupted, corruption_kinds = self._corrupt(image)
        return SyntheticCase(
            image=image,
            labels=self.labels,
            spacing=(spacing_z, spacing_xy, spacing_xy),
            corrupted=corrupted,
            corruption_kinds=corruption_kinds,
            kinds=kinds,
            distractors=self.distractors,
        )

    def _body(self) -> None:
        rng, (depth, height, width) = self.rng, self.shape
        zt = (self.z / max(depth - 1, 1))[:, None, None]
        ry = height / 2 * rng.uniform(0.75, 0.95) * (1 + rng.uniform(-0.08, 0.08) * np.sin(np.pi * zt + rng.uniform(0, 6.3)))
        rx = width / 2 * rng.uniform(0.75, 0.95) * (1 + rng.uniform(-0.08, 0.08) * np.sin(np.pi * zt + rng.uniform(0, 6.3)))
        cy, cx = height / 2 + rng.uniform(-0.04, 0.04) * height, width / 2 + rng.uniform(-0.04, 0.04) * width
        r2 = ((self.y[None, :, None] - cy) / ry) ** 2 + ((self.x[None, None, :] - cx) / rx) ** 2
        self.body = r2 <= 1.0
        self.body_centre, self.body_radii = (cy, cx), (float(ry.min()), float(rx.min()))
        rim = rng.uniform(0.82, 0.92)
        self.tissue[self.body] = 1.0
        self.tissue[(r2 <= 1.0) & (r2 > rim**2)] = rng.uniform(1.2, 1.5)  # fat under the skin
        # Unlabelled background anatomy, of a contrast no object has (|contrast| >= 0.35).
        for _ in range(int(rng.integers(1, 4))):
            box, mask = self._ellipsoid(large=True)
            region = self.tissue[box]
            region[mask & (region > 0)] = rng.uniform(0.8, 1.2)

    def _objects(self) -> tuple[tuple[str, ...], list[float]]:
        rng, config = self.rng, self.config
        wanted = int(rng.integers(config.objects[0], config.objects[1] + 1))
        min_voxels = max(30, int(2e-4 * np.prod(self.shape)))
        kinds, contrasts = [], []
        for _ in range(wanted):
            for _attempt in range(12):
                kind = str(rng.choice(config.kinds))
                box, mask = self._shape(kind)
                free = mask & (self.labels[box] == 0)
                if free.sum() >= max(min_voxels, 0.7 * mask.sum()):
                    break
            else:
                continue  # the volume is too full for another object; fewer objects then
            label = len(kinds) + 1
            self.labels[box][free] = label
            # bright up to 2.5x the tissue (contrast-filled vessels, the sample's organs), dark down to 1/3
            contrast = float(rng.uniform(0.35, 1.5)) if rng.random() < 0.6 else -float(rng.uniform(0.26, 0.67))
            self.tissue[box][free] = 1.0 + contrast
            kinds.append(kind)
            contrasts.append(contrast)
        if not kinds:  # cannot happen for shapes >= MIN_SHAPE, but never return an unlabelled case
            box, mask = self._ellipsoid()
            self.labels[box][mask] = 1
            self.tissue[box][mask] = 1.6
            kinds, contrasts = ["ellipsoid"], [0.6]
        return tuple(kinds), contrasts

    def _add_distractors(self, contrasts: list[float]) -> None:
        rng = self.rng
        for _ in range(int(rng.integers(self.config.distractors[0], self.config.distractors[1] + 1))):
            for _attempt in range(6):  # prefer a place that touches no object
                box, mask = self._shape(str(rng.choice(("ellipsoid", "lesion", "tube"))), small=True)
                if not (mask & (self.labels[box] > 0)).any():
                    break
            free = mask & (self.labels[box] == 0)
            contrast = contrasts[int(rng.integers(len(contrasts)))] * rng.uniform(0.9, 1.1)
            self.tissue[box][free] = 1.0 + contrast
            self.distractors[box] |= free

    def _render(self) -> np.ndarray:
        rng, config, (depth, height, width) = self.rng, self.config, self.shape
        image = self.tissue
        texture = _smooth_noise(rng, self.shape, (max(depth // 6, 2), max(height // 12, 2), max(width // 12, 2)))
        inside = image > 0
        image[inside] *= 1.0 + rng.uniform(0.03, 0.08) * texture[inside]
        sigma = rng.uniform(*config.blur_px)
        image = ndimage.gaussian_filter(image, (0.3, sigma, sigma), truncate=3.0, output=np.float32)
        # A smooth bias: a random linear ramp plus curvature, exponentiated.
        zt, yt, xt = (np.linspace(-1, 1, n, dtype=np.float32) for n in self.shape)
        a, b, c, d = rng.normal(size=4)
        field = a * zt[:, None, None] + b * yt[None, :, None] + c * xt[None, None, :] + d * yt[None, :, None] * xt[None, None, :]
        field *= rng.uniform(*config.bias) / (abs(a) + abs(b) + abs(c) + abs(d) + 1e-6)
        image *= np.exp(field, dtype=np.float32)
        scale = float(rng.uniform(100.0, 2000.0))
        sd = rng.uniform(*config.noise) * scale
        image *= scale
        if rng.random() < 0.5:  # Gaussian noise
            image += rng.standard_normal(self.shape, dtype=np.float32) * sd
        else:  # Rician, as magnitude MR images have
            real = image + rng.standard_normal(self.shape, dtype=np.float32) * sd
            imaginary = rng.standard_normal(self.shape, dtype=np.float32) * sd
            image = np.sqrt(real * real + imaginary * imaginary, dtype=np.float32)
        image += np.float32(rng.uniform(-0.1, 0.1) * scale)
        self.scale = scale
        return image

    def _corrupt(self, image: np.ndarray) -> tuple[tuple[int, ...], tuple[str, ...]]:
        rng, depth = self.rng, self.shape[0]
        count = int(round(self.config.corrupted_fraction * depth))
        slices = np.sort(rng.choice(depth, size=count, replace=False)) if count else np.zeros(0, int)
        kinds = []
        for index in slices:
            kind = str(rng.choice(self.config.corruption_kinds))
            plane = image[index]
            if kind == "noise":
                plane += rng.standard_normal(plane.shape, dtype=np.float32) * np.float32(rng.uniform(0.3, 1.0) * self.scale)
            elif kind == "streaks":
                plane += self._streaks()
            else:  # dropped: a blank slice at the image's darkest value
                plane[:] = image.min()
            kinds.append(kind)
        return tuple(int(i) for i in slices), tuple(kinds)

    def _streaks(self) -> np.ndarray:
        rng, (_, height, width) = self.rng, self.shape
        py, px = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
        dy, dx = self.y[:, None] - py, self.x[None, :] - px
        out = np.zeros((height, width), np.float32)
        for angle in rng.uniform(0, np.pi, size=int(rng.integers(3, 9))):
            distance = np.abs(dy * np.float32(np.cos(angle)) - dx * np.float32(np.sin(angle)))
            amplitude = rng.uniform(0.4, 1.5) * self.scale * rng.choice((-1, 1))
            out += np.float32(amplitude) * np.exp(-((distance / rng.uniform(0.8, 2.5)) ** 2))
        return out

    # ---- shapes: each returns (a bounding box of slices, a boolean mask inside it)
    def _shape(self, kind: str, small: bool = False):
        if kind == "ellipsoid":
            return self._ellipsoid(small=small)
        if kind == "tube":
            return self._tube(small=small)
        return self._lesion(split=kind == "split lesion", small=small)

    def _centre(self, margin: float) -> tuple[float, float]:
        """An in-plane point inside the body, ``margin`` pixels from its edge where possible."""
        (cy, cx), (ry, rx) = self.body_centre, self.body_radii
        radius, angle = math.sqrt(self.rng.uniform(0, 1)), self.rng.uniform(0, 2 * np.pi)
        ry, rx = max(ry - margin, 1.0), max(rx - margin, 1.0)
        return cy + radius * ry * math.sin(angle), cx + radius * rx * math.cos(angle)

    def _z_range(self, half_extent: float) -> float:
        """A centre slice: mostly so that the object starts and ends inside the volume."""
        depth = self.shape[0]
        if self.rng.random() < 0.7 and 2 * half_extent < depth - 3:
            return self.rng.uniform(half_extent + 1, depth - 2 - half_extent)
        return self.rng.uniform(0, depth - 1)

    def _box(self, z0, z1, y0, y1, x0, x1):
        depth, height, width = self.shape
        box = (
            slice(max(int(math.floor(z0)), 0), min(int(math.ceil(z1)) + 1, depth)),
            slice(max(int(math.floor(y0)), 0), min(int(math.ceil(y1)) + 1, height)),
            slice(max(int(math.floor(x0)), 0), min(int(math.ceil(x1)) + 1, width)),
        )
        if any(s.start >= s.stop for s in box):  # outside the volume: an empty box at the origin
            box = (slice(0, 1),) * 3
        return box, self.z[box[0]][:, None, None], self.y[box[1]][None, :, None], self.x[box[2]][None, None, :]

    def _ellipsoid(self, small: bool = False, large: bool = False):
        rng, depth, size = self.rng, self.shape[0], self.size
        scale = 0.5 if small else 2.0 if large else 1.0
        rz = rng.uniform(0.15, 0.45) * depth * (1.5 if large else 1.0)
        ry, rx = rng.uniform(0.05, 0.24, size=2) * size * scale  # small nodules to large organs
        theta = rng.uniform(0, np.pi)
        drift = rng.uniform(-0.5, 0.5, size=2) * size / 128  # pixels per slice: an oblique organ
        cz = self._z_range(rz)
        cy, cx = self._centre(max(ry, rx))
        reach = max(ry, rx) + np.abs(drift).max() * rz
        box, z, y, x = self._box(cz - rz, cz + rz, cy - reach, cy + reach, cx - reach, cx + reach)
        yc, xc = y - (cy + drift[0] * (z - cz)), x - (cx + drift[1] * (z - cz))
        u = yc * np.float32(np.cos(theta)) + xc * np.float32(np.sin(theta))
        v = xc * np.float32(np.cos(theta)) - yc * np.float32(np.sin(theta))
        return box, ((z - cz) / rz) ** 2 + (u / ry) ** 2 + (v / rx) ** 2 <= 1.0

    def _tube(self, small: bool = False):
        rng, depth, size = self.rng, self.shape[0], self.size
        if rng.random() < 0.5:
            z0, z1 = 0.0, depth - 1.0
        else:
            z0 = rng.uniform(0, 0.4 * depth)
            z1 = z0 + rng.uniform(0.4, 0.9) * (depth - 1 - z0)
        radius = max(rng.uniform(0.015, 0.04) * size * (0.7 if small else 1.0), 1.5)
        zs = np.arange(int(math.floor(z0)), int(math.ceil(z1)) + 1, dtype=np.float32)
        t = (zs - z0) / max(depth - 1, 1)
        amplitude = rng.uniform(0.02, 0.12, size=2) * size
        path = []
        for axis, (slope, phase, freq) in enumerate(
            zip(rng.uniform(-0.2, 0.2, 2) * size, rng.uniform(0, 2 * np.pi, 2), rng.uniform(0.5, 2.0, 2))
        ):
            path.append(slope * t + amplitude[axis] * np.sin(2 * np.pi * freq * t + phase))
        cy, cx = self._centre(radius + float(np.abs(path[0]).max() + np.abs(path[1]).max()))
        py, px = cy + path[0], cx + path[1]
        r = radius * (1 + 0.25 * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * t + rng.uniform(0, 6.3)))
        reach = float(r.max()) + 1
        box, z, y, x = self._box(zs[0], zs[-1], py.min() - reach, py.max() + reach, px.min() - reach, px.max() + reach)
        keep = slice(box[0].start - int(zs[0]), box[0].stop - int(zs[0]))
        if len(zs[keep]) != box[0].stop - box[0].start:  # the path left the volume altogether
            return box, np.zeros((1, 1, 1), bool)
        py, px, r = py[keep, None, None], px[keep, None, None], r[keep, None, None]
        return box, (y - py) ** 2 + (x - px) ** 2 <= r**2

    def _lesion(self, split: bool = False, small: bool = False):
        """A noisy blob whose radius swells and shrinks along z; ``split``: two drifting lobes."""
        rng, depth, size = self.rng, self.shape[0], self.size
        rz = rng.uniform(0.1, 0.3) * depth + 1.5
        radius = rng.uniform(0.04, 0.11) * size * (0.6 if small else 1.0) + 1.0
        roughness = rng.uniform(0.2, 0.35) if split else rng.uniform(0.3, 0.7)
        separation = rng.uniform(3.0, 4.5) * radius if split else 0.0
        theta = rng.uniform(0, 2 * np.pi)
        drift = rng.uniform(-0.3, 0.3, size=2) * size / 128
        cz = self._z_range(rz)
        reach = radius * (1 + 2.5 * roughness) + separation / 2 + np.abs(drift).max() * rz
        cy, cx = self._centre(reach * 0.7)
        box, z, y, x = self._box(cz - rz, cz + rz, cy - reach, cy + reach, cx - reach, cx + reach)
        t = np.clip((z - cz) / rz, -1.0, 1.0)
        profile = np.sqrt(np.clip(1 - t**4 if split else 1 - t**2, 0, None))  # grows, then shrinks
        r = np.maximum(radius * profile, 1e-3)
        yc, xc = y - (cy + drift[0] * (z - cz)), x - (cx + drift[1] * (z - cz))
        if split:  # the lobes coincide at one end of the range and are apart at the other
            half = separation / 2 * (t + 1) / 2 * (1 if rng.random() < 0.5 else -1)
            hy, hx = half * np.float32(np.sin(theta)), half * np.float32(np.cos(theta))
            d = np.minimum(np.hypot(yc - hy, xc - hx), np.hypot(yc + hy, xc + hx))
        else:
            d = np.hypot(yc, xc)
        noise = _smooth_noise(rng, d.shape, (max(rz / 2, 1.5), max(radius / 2, 3.0), max(radius / 2, 3.0)))
        inside = (1 - d / r + roughness * np.clip(noise, -2.5, 2.5) > 0) & (np.abs(z - cz) < rz)
        # Satellite islands are welcome, specks of a few voxels are label noise.
        islands, count = ndimage.label(inside)
        if count > 1:
            sizes = np.bincount(islands.ravel())
            inside = (sizes >= _MIN_ISLAND)[islands] & inside
        return box, inside


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cell: tuple[float, ...]) -> np.ndarray:
    """Unit-variance noise, smooth over about ``cell`` voxels per axis.

    Coarse white noise, linearly upsampled one axis at a time: several times faster than
    ``ndimage.zoom`` for a whole volume. (Smoothstep weights were tried: their flat spots at
    the coarse grid points make thresholded lesions look blocky.)
    """
    coarse_shape = tuple(max(int(math.ceil(n / c)) + 2, 2) for n, c in zip(shape, cell))
    out = rng.standard_normal(coarse_shape, dtype=np.float32)
    for axis, (n, c, m) in enumerate(zip(shape, cell, coarse_shape)):
        position = rng.uniform(0, 1) + np.arange(n, dtype=np.float32) / np.float32(c)
        position = np.minimum(position, m - 1.001)
        index = position.astype(np.intp)
        weight = position - index
        view = [1] * len(shape)
        view[axis] = n
        weight = weight.reshape(view)
        out = out.take(index, axis) * (1 - weight) + out.take(index + 1, axis) * weight
    std = out.std()
    return out / std if std > 0 else out
