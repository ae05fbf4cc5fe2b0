import pytest
from hydra import compose

from napari_samed2.errors import UnknownModelError
from napari_samed2.models import MODELS, Preprocessing, get_spec


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_entry_resolves_to_a_sam2_config(name):
    import sam2  # noqa: F401  (initialises sam2's hydra config module)

    spec = MODELS[name]
    config_name, overrides = spec.hydra_config
    cfg = compose(config_name=config_name, overrides=overrides)
    assert cfg.model.image_encoder.trunk._target_.endswith("Hiera")
    assert spec.image_size % 32 == 0
    assert spec.downloadable or spec.weights_hint


def test_published_locations_and_preprocessing():
    assert get_spec("sam2.1-large").hf_repo == "facebook/sam2.1-hiera-large"
    assert get_spec("sam2.1-base-plus").hf_filename == "sam2.1_hiera_base_plus.pt"
    medsam2 = get_spec("medsam2")
    assert (medsam2.image_size, medsam2.hf_repo) == (512, "wanglab/MedSAM2")
    samed2 = get_spec("samed2")
    assert samed2.temporal_adapter and not samed2.downloadable
    assert samed2.preprocessing is Preprocessing.UNIT_RANGE and samed2.mask_threshold == 0.5
    assert "sam2_hiera_s" in samed2.config


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownModelError, match="sam2.1-tiny"):
        get_spec("sam3-giant")
