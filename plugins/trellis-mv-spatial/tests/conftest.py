import pytest


@pytest.fixture(scope="session")
def proxy():
    """The proxy pipeline, one held-out shape and its four axis views (front, right, back, left)."""
    from trellis_mv.proxy import HELD_OUT_SEED, ProxyPipeline, input_views, make_shape

    shape = make_shape(HELD_OUT_SEED + 1)
    return ProxyPipeline(), shape, list(input_views(shape.occupancy, shape.colors, ["front", "right", "back", "left"]))
