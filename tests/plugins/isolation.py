"""Each test session keeps its files to itself, so that two runs on one machine never share a folder.

Settings default their home to ``./.ovis-batch`` (the SQLite file, the folder broker, local outputs): a test
that forgets to give one would write into the checkout, where another run of the suite, or a person trying
the quick start, reads and consumes the same files. The whole session gets a home of its own instead;
tests that build settings or stacks still give each test its own folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

HOME_ENV = "OVIS_BATCH_HOME"


@pytest.fixture(scope="session", autouse=True)
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A folder of the session's own as OVIS_BATCH_HOME, for the tests and every process they start."""
    saved = os.environ.get(HOME_ENV)
    home = str(tmp_path_factory.mktemp("ovis-home"))
    os.environ[HOME_ENV] = home
    try:
        yield home
    finally:
        if saved is None:
            os.environ.pop(HOME_ENV, None)
        else:
            os.environ[HOME_ENV] = saved
