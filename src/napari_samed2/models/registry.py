"""The models the plugin knows by name: their sam2 config, image size and where weights live."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from napari_samed2.errors import UnknownModelError


class Preprocessing(str, Enum):
    """How a frame in [0, 1] is turned into model input.

    SAM-2 and MedSAM2 were trained with ImageNet mean/std; the SAMed-2 release feeds RGB in
    [0, 1] without normalisation, so using the wrong one silently degrades masks.
    """

    IMAGENET = "imagenet"
    UNIT_RANGE = "unit_range"


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build a model and fetch its weights.

    ``config`` is a hydra config name inside the ``sam2`` package or, when ``config_package``
    names a package, inside that package's folders (``configs/demo.yaml`` in
    ``napari_samed2.models``). Weights come from the Hugging Face hub (``hf_repo`` /
    ``hf_filename``), from a file shipped in this package (``packaged_weights``, a name in
    ``napari_samed2/models/weights/``) or, when none of those is set, only from a local file
    whose origin ``weights_hint`` tells the user.
    """

    name: str
    title: str
    config: str
    image_size: int
    hf_repo: str | None = None
    hf_filename: str | None = None
    weights_hint: str = ""
    config_package: str | None = None
    packaged_weights: str | None = None
    preprocessing: Preprocessing = Preprocessing.IMAGENET
    mask_threshold: float = 0.0
    temporal_adapter: bool = False

    @property
    def downloadable(self) -> bool:
        return self.hf_repo is not None and self.hf_filename is not None

    @property
    def hydra_config(self) -> tuple[str | None, list[str]]:
        """``(config_name, overrides)`` for hydra's ``compose`` in sam2's config module.

        A config of our own is composed as a config group from an added search path, with no
        primary config: hydra looks the primary config up before it applies a search path
        override, so naming our file as the primary config would not find it, and swapping
        hydra's global state instead would race with other threads that build models.
        """
        if self.config_package is None:
            return self.config, []
        group, _, option = self.config.removesuffix(".yaml").rpartition("/")
        return None, [f"hydra.searchpath=[pkg://{self.config_package}]", f"+{group}={option}"]


def _sam2(name, title, cfg, size_tag, hf_file, generation="sam2.1"):
    return ModelSpec(
        name=name,
        title=title,
        config=f"configs/{generation}/{generation}_hiera_{cfg}.yaml",
        image_size=1024,
        hf_repo=f"facebook/{generation}-hiera-{size_tag}",
        hf_filename=hf_file,
    )


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _sam2("sam2.1-tiny", "SAM 2.1 Hiera tiny", "t", "tiny", "sam2.1_hiera_tiny.pt"),
        _sam2("sam2.1-small", "SAM 2.1 Hiera small", "s", "small", "sam2.1_hiera_small.pt"),
        _sam2(
            "sam2.1-base-plus", "SAM 2.1 Hiera base+", "b+", "base-plus", "sam2.1_hiera_base_plus.pt"
        ),
        _sam2("sam2.1-large", "SAM 2.1 Hiera large", "l", "large", "sam2.1_hiera_large.pt"),
        _sam2("sam2-tiny", "SAM 2 Hiera tiny", "t", "tiny", "sam2_hiera_tiny.pt", "sam2"),
        _sam2("sam2-small", "SAM 2 Hiera small", "s", "small", "sam2_hiera_small.pt", "sam2"),
        _sam2(
            "sam2-base-plus", "SAM 2 Hiera base+", "b+", "base-plus", "sam2_hiera_base_plus.pt", "sam2"
        ),
        _sam2("sam2-large", "SAM 2 Hiera large", "l", "large", "sam2_hiera_large.pt", "sam2"),
        ModelSpec(
            name="medsam2",
            title="MedSAM2 (SAM 2.1 tiny fine-tuned on medical images, 512 px)",
            config="configs/sam2.1/sam2.1_hiera_t.yaml",
            image_size=512,
            hf_repo="wanglab/MedSAM2",
            hf_filename="MedSAM2_latest.pt",
        ),
        ModelSpec(
            name="samed2",
            title="SAMed-2 (SAM 2 Hiera small with temporal adapter)",
            config="configs/sam2/sam2_hiera_s.yaml",
            image_size=1024,
            weights_hint=(
                "SAMed-2 weights are not on the Hugging Face hub: download the checkpoint "
                "(e.g. latest_epoch_0217.pth) from the model zoo of the SAMed-2 release "
                "(github.com/ZhilingYan/Medical-SAM-Bench, docs/MODEL_ZOO.md) and pass its path"
            ),
            preprocessing=Preprocessing.UNIT_RANGE,
            mask_threshold=0.5,
            temporal_adapter=True,
        ),
        ModelSpec(
            # 4,134,754 parameters (8.3 MB as 16-bit safetensors); see configs/demo.yaml.
            name="demo",
            title="Demo model (4.1 M, 256 px): trained on synthetic volumes only, not a medical model",
            config="configs/demo.yaml",
            config_package="napari_samed2.models",
            image_size=256,
            packaged_weights="demo.safetensors",
            weights_hint=(
                "The demo model's weights ship inside napari-samed2 as "
                "napari_samed2/models/weights/demo.safetensors once trained; this installation "
                "has none yet. Use another model, or pass the path of a demo checkpoint"
            ),
        ),
    )
}

DEFAULT_MODEL = "sam2.1-tiny"


def get_spec(name: str) -> ModelSpec:
    """Look a model up by name, with the list of names in the error."""
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(MODELS)
        raise UnknownModelError(
            f"Unknown model {name!r}. Known models: {known}; or pass the path of a checkpoint file."
        ) from None
