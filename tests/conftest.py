from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, __import__("os").path.dirname(__file__))

from servers import Nginx  # noqa: E402


@pytest.fixture(scope="session")
def nginx() -> Iterator[Nginx]:
    if not shutil.which("nginx"):
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    server = Nginx()
    yield server
    server.stop()
