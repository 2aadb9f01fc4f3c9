import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", deadline=None, max_examples=25, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@contextlib.contextmanager
def installed_example(folder: Path, module: str, work: Path) -> Iterator[Path]:
    """A distribution from docs/examples built and installed (no network, no dependencies) into a directory of its
    own, on ``sys.path`` for the block; the build writes into its source, so a copy is built."""
    source, target = work / "source", work / "site"
    shutil.copytree(folder, source)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(target), str(source)],
        check=True, capture_output=True, text=True,
    )
    sys.path.insert(0, str(target))
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        sys.modules.pop(module, None)


@pytest.fixture(scope="session")
def install_example() -> Callable[[Path, str, Path], contextlib.AbstractContextManager[Path]]:
    """:func:`installed_example`, for tests in any folder."""
    return installed_example
