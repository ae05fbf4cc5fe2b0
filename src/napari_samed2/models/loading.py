"""Build a SAM-2 family model from the registry and load its weights (local file or the hub)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import logging
import numbers
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from napari_samed2.errors import CheckpointMismatchError, ModelSettingsError, WeightsUnavailableError
from napari_samed2.models.checkpoint import (
    CHECKPOINT_SUFFIXES,
    describe_mismatch,
    diff_state_dict,
    guess_architecture,
    read_metadata,
    read_state_dict,
)
from napari_samed2.models.registry import DEFAULT_MODEL, MODELS, ModelSpec, get_spec
from napari_samed2.models.versions import VERSION_FORMAT, load_version

log = logging.getLogger(__name__)

# sam2's mask post-processing (hole filling) needs its optional CUDA extension; without it
# sam2 warns on every frame and leaves the mask as is. We switch it off once instead.
HAS_SAM2_EXTENSION = importlib.util.find_spec("sam2._C") is not None


_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """A digest of the file's bytes, computed once while its path, size and modification time
    stay the same.

    A model is named by its weights, not by where they lie: the same file at another path or
    written again with a new modification time (the package reinstalled or upgraded, a second
    checkout) must still resume its autosaves and read its precomputed embeddings. Reading the
    file costs about a second for a 900 MB checkpoint, once per process and file.
    """
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    digest = _FILE_DIGESTS.get(key)
    if digest is None:
        hasher = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as file:
            for chunk in iter(lambda: file.read(1 << 22), b""):
                hasher.update(chunk)
        digest = _FILE_DIGESTS[key] = hasher.hexdigest()
    return digest


@dataclass
class LoadedModel:
    """A ready model: the sam2 module plus what the engine needs to feed it correctly."""

    spec: ModelSpec
    sam: torch.nn.Module  # a sam2 SAM2VideoPredictor, i.e. a SAM2Base with stock post-processing
    device: torch.device
    dtype: torch.dtype  # compute dtype; weights stay float32 and bf16 runs under autocast
    checkpoint: Path | None
    #: the :attr:`feature_signature` of a model whose image encoder this one has unchanged (a
    #: continual-adaptation version: the base's), so both read the same cached image features
    shares_features_with: str | None = None
    #: input smoothing per unit of a volume's noise level (0: none; see ``Volume.model_input``):
    #: a continual-adaptation version may choose it for a noisy modality, e.g. ultrasound speckle
    input_smoothing: float = 0.0

    @property
    def image_size(self) -> int:
        return int(self.sam.image_size)

    @property
    def signature(self) -> str:
        """Identifies the weights and compute settings (saved sessions and autosaves name their
        model by it; the embedding cache keys by :attr:`feature_signature`)."""
        source = f"memory:{id(self.sam):x}"
        if self.checkpoint is not None and self.checkpoint.exists():
            source = f"file:{file_digest(self.checkpoint)}"
        text = f"{self.spec.name}|{self.image_size}|{self.dtype}|{source}"
        if self.input_smoothing:
            text += f"|smoothing {self.input_smoothing:g}"
        return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()

    @property
    def feature_signature(self) -> str:
        """Identifies what image features depend on (the image encoder's weights and the
        compute settings): the embedding cache's key. A version that only adapted memory
        attention or the decoder shares its base's, so switching to it encodes nothing again."""
        return self.shares_features_with or self.signature

    def with_input_smoothing(self, smoothing: float) -> LoadedModel:
        """The same weights reading their input with another smoothing: its features are
        its own, not those cached for this model or for the base it shares them with."""
        if smoothing == self.input_smoothing:
            return self
        return dataclasses.replace(self, input_smoothing=smoothing, shares_features_with=None)

    def input_for(self, volume, frame: int) -> torch.Tensor:
        """Frame ``frame`` of ``volume`` (an ``engine.Volume``) as this model's input."""
        return volume.model_input(frame, self.image_size, self.spec.preprocessing, smoothing=self.input_smoothing)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.sam.parameters())

    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        """Inference mode, with autocast when the compute dtype is below float32."""
        with torch.inference_mode():
            if self.dtype == torch.float32:
                yield
            else:
                with torch.autocast(self.device.type, dtype=self.dtype):
                    yield

    def describe(self) -> str:
        return (
            f"{self.spec.title}: {self.image_size} px, {self.device.type}, "
            f"{str(self.dtype).removeprefix('torch.')}, {self.num_parameters / 1e6:.1f} M parameters"
        )


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then the CPU."""
    if str(device) != "auto":
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError):
            raise ModelSettingsError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', not {device!r}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ModelSettingsError("device='cuda' was asked for but PyTorch sees no CUDA GPU; use 'auto' or 'cpu'.")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ModelSettingsError("device='mps' was asked for but this PyTorch has no MPS support; use 'auto' or 'cpu'.")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"``: bfloat16 on CUDA (what SAM-2 was tuned for), float32 elsewhere.

    bf16 autocast on CPU was measured about 10x slower than float32 here.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    named = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return named[dtype]
    except KeyError:
        raise ModelSettingsError(f"dtype must be 'auto' or one of {sorted(named)}, not {dtype!r}") from None


def build_model(spec: ModelSpec, image_size: int | None = None, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The sam2 architecture of ``spec`` with random weights (SAMed-2's adapter inserted).

    Built as sam2's ``SAM2VideoPredictor`` with its stock post-processing overrides, so the
    engine and the stock predictor run the very same module.
    """
    from sam2.build_sam import build_sam2_video_predictor

    size = spec.image_size if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 32 or size % 32:
        raise ModelSettingsError(f"image_size must be a positive multiple of 32 (e.g. 512 or 1024), not {size!r}")
    config_name, overrides = spec.hydra_config
    sam = build_sam2_video_predictor(
        config_name, ckpt_path=None, device=device, hydra_overrides_extra=[*overrides, f"++model.image_size={size}"]
    )
    if spec.temporal_adapter:
        from napari_samed2.models.temporal_adapter import insert_temporal_adapters

        insert_temporal_adapters(sam.image_encoder.trunk)
        sam.to(device)
    if not HAS_SAM2_EXTENSION:
        sam.fill_hole_area = 0
    if not (sam.multimask_output_in_sam or sam.multimask_output_for_tracking):
        # sam2's predictor swaps an unstable single mask for the best of the three other
        # mask tokens; a model that never outputs several masks never trained those tokens
        sam.sam_mask_decoder.dynamic_multimask_via_stability = False
    return sam.eval()


PACKAGED_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def packaged_weights(spec: ModelSpec) -> Path | None:
    """The weights file shipped in this package for ``spec``, if there is one."""
    if spec.packaged_weights is None:
        return None
    path = PACKAGED_WEIGHTS_DIR / spec.packaged_weights
    return path if path.is_file() else None


def ready_model() -> str:
    """The model to offer first: one whose weights ship with the package (segments with
    nothing downloaded), else the registry default."""
    return next((name for name, spec in MODELS.items() if packaged_weights(spec) is not None), DEFAULT_MODEL)


def fetch_weights(spec: ModelSpec, cache_dir: str | Path | None = None) -> Path:
    """The weights file of ``spec``: shipped in this package, or downloaded from (or found in
    the cache of) the Hugging Face hub."""
    if spec.packaged_weights is not None:
        path = packaged_weights(spec)
        if path is not None:
            return path
        raise WeightsUnavailableError(
            f"{spec.title}: its weights file {spec.packaged_weights} is not in this installation "
            f"(looked in {PACKAGED_WEIGHTS_DIR}). {spec.weights_hint}: "
            f"load_model('/path/to/{spec.packaged_weights}', architecture={spec.name!r})."
        )
    if not spec.downloadable:
        raise WeightsUnavailableError(
            f"{spec.title} cannot be downloaded automatically. {spec.weights_hint}: "
            f"load_model('/path/to/checkpoint.pth', architecture={spec.name!r})."
        )
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    def unavailable(reason: str) -> WeightsUnavailableError:
        return WeightsUnavailableError(
            f"Could not get {spec.hf_filename} from the Hugging Face hub ({spec.hf_repo}): "
            f"{reason}. If this machine is offline, download the file elsewhere and pass its "
            f"path: load_model('/path/to/{spec.hf_filename}'), or place it in the Hugging Face "
            f"cache ({cache_dir or HF_HUB_CACHE}) with `hf download {spec.hf_repo} {spec.hf_filename}`."
        )

    cached = try_to_load_from_cache(spec.hf_repo, spec.hf_filename, cache_dir=cache_dir)
    if isinstance(cached, str):
        return Path(cached)
    unreachable = hub_unreachable()
    if unreachable:  # fail in milliseconds: the hub client retries for ~24 s before giving up
        raise unavailable(unreachable)
    try:
        return Path(hf_hub_download(spec.hf_repo, spec.hf_filename, cache_dir=cache_dir))
    except Exception as exc:  # the hub raises many types (HTTP, offline, cache); all mean "no file"
        raise unavailable((str(exc).splitlines() or [type(exc).__name__])[0].rstrip(". ")) from exc


HUB_PROBE_TIMEOUT_S = 3.0


def hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the Hugging Face hub cannot be reached (offline mode, no name resolution, no
    connection within ``timeout``), or ``None`` when it can or a proxy decides (a proxy may
    reach what a direct connection cannot, so the hub client is left to try)."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "offline mode is on (HF_HUB_OFFLINE)"
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as exc:
        return f"this machine seems offline ({url.hostname}:{port} cannot be reached: {exc.strerror or exc})"
    return None


def looks_like_path(name_or_path: str | os.PathLike) -> bool:
    text = os.fspath(name_or_path)
    return text not in MODELS and (
        Path(text).suffix in CHECKPOINT_SUFFIXES or os.sep in text or Path(text).exists()
    )


def load_model(
    name_or_checkpoint: str | os.PathLike = DEFAULT_MODEL,
    *,
    architecture: str | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    image_size: int | None = None,
    cache_dir: str | Path | None = None,
) -> LoadedModel:
    """Load a registry model by name (downloading its weights) or a local checkpoint file.

    A local file's architecture is guessed from its keys unless ``architecture`` names it or
    the file does: a training checkpoint (``.safetensors`` from :mod:`napari_samed2.training`)
    carries its architecture and image size in its metadata; a model version (from
    :mod:`napari_samed2.training.continual`) loads its base and applies its changed tensors.
    The file is checked against the
    architecture before loading, so a wrong file gives a message naming the missing and
    unexpected keys.
    """
    if looks_like_path(name_or_checkpoint):
        checkpoint = Path(name_or_checkpoint).expanduser()
        metadata = read_metadata(checkpoint)
        if metadata.get("format") == VERSION_FORMAT:  # a continual adaptation's version: base + changes
            return load_version(checkpoint, metadata, device=device, dtype=dtype, image_size=image_size, cache_dir=cache_dir)
        state_dict = read_state_dict(checkpoint)
        guess = metadata.get("architecture") or guess_architecture(state_dict, checkpoint.name)
        spec = get_spec(architecture or guess or DEFAULT_MODEL)
        if image_size is None and metadata.get("image_size", "").isdigit():
            image_size = int(metadata["image_size"])
    else:
        spec = get_spec(os.fspath(name_or_checkpoint))
        checkpoint = fetch_weights(spec, cache_dir)
        state_dict = read_state_dict(checkpoint)
        guess = guess_architecture(state_dict, checkpoint.name)

    torch_device = resolve_device(device)
    sam = build_model(spec, image_size, device="cpu")
    load_state_dict_checked(sam, state_dict, spec, checkpoint, guess)
    sam.to(torch_device)
    model = LoadedModel(spec, sam, torch_device, resolve_dtype(dtype, torch_device), checkpoint)
    file_digest(checkpoint)  # read now, while loading (the GUI loads in a worker), not at the first session
    log.info("loaded %s from %s", model.describe(), checkpoint)
    return model


def load_state_dict_checked(
    sam: torch.nn.Module,
    state_dict: dict[str, torch.Tensor],
    spec: ModelSpec,
    checkpoint: Path | str,
    guess: str | None = None,
) -> None:
    ignored = ("fancy_fusion.",) if spec.temporal_adapter else ()
    diff = diff_state_dict(sam.state_dict(), state_dict, ignored)
    if not diff.ok:
        raise CheckpointMismatchError(describe_mismatch(checkpoint, spec, diff, guess))
    sam.load_state_dict({k: v for k, v in state_dict.items() if not any(p in k for p in ignored)})
