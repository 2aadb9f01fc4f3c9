"""The examples in the docstrings run and hold."""

import doctest
import importlib
import pkgutil

import pytest

import trellis_mv

# heavy or optional-dependency modules carry their own tests
SKIP = ("trellis_mv.integrations", "trellis_mv.proxy.train")

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(trellis_mv.__path__, "trellis_mv.")
    if not m.name.startswith(SKIP)
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


def test_every_public_function_has_a_docstring():
    missing = [
        name for name in trellis_mv.__all__
        if not name.startswith("__") and not (getattr(trellis_mv, name).__doc__ or "").strip()
    ]
    assert not missing, f"public names without a docstring: {missing}"
