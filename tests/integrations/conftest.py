"""Fixtures for the tests against TRELLIS.2's and TRELLIS' own code.

Set ``TRELLIS2_SRC`` (and ``TRELLIS_SRC``) to a folder holding the ``trellis2`` (``trellis``)
package, e.g. an extracted copy of the repository; without them, and without an
importable installation, these tests skip and say why.
"""

from __future__ import annotations

from typing import Any

import pytest
from _trellis_harness import load_trellis2_or_skip, load_trellis_or_skip, tiny_pipeline


@pytest.fixture(scope="session")
def trellis2() -> Any:
    return load_trellis2_or_skip()


@pytest.fixture(scope="session")
def trellis_v1() -> Any:
    return load_trellis_or_skip()


@pytest.fixture
def pipeline(trellis2: Any) -> Any:
    return tiny_pipeline()


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Any:
    """Tiny models run fastest on one thread (and do not fight other jobs for cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
