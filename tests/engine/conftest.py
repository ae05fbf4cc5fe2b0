import numpy as np
import pytest

FRAMES, HEIGHT, WIDTH = 12, 64, 80


@pytest.fixture(scope="package")
def array():
    """A bright ellipse drifting right by 2 px a frame over noise: (12, 64, 80) float32."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    frames = [
        200.0 * ((((yy - 30) / 12.0) ** 2 + ((xx - 25 - 2 * z) / 15.0) ** 2) < 1) + rng.normal(0, 20, (HEIGHT, WIDTH))
        for z in range(FRAMES)
    ]
    return np.stack(frames).astype(np.float32)
