import pytest
import torch


@pytest.fixture(scope="session")
def _proxy_session():
    from trellis_mv.proxy import HELD_OUT_SEED, ProxyPipeline, input_views, make_shape

    shape = make_shape(HELD_OUT_SEED + 1)
    return ProxyPipeline(), shape, list(input_views(shape.occupancy, shape.colors, ["front", "right", "back", "left"]))


@pytest.fixture
def proxy(_proxy_session):
    """The proxy pipeline, one held-out shape and its four axis views (front, right, back, left).

    The proxy's networks are small: one torch thread runs them several times faster than two
    competing ones, so tests using it run single-threaded (restored afterwards).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield _proxy_session
    finally:
        torch.set_num_threads(threads)
