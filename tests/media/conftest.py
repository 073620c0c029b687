"""Fixtures of the media tests: a laptop's PulseAudio whose microphone hears its speakers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.media.laptop import Laptop


@pytest.fixture(scope="module")
def laptop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Laptop]:
    """A private PulseAudio: the laptop's speakers leak into its microphone; stopped after."""
    with Laptop(tmp_path_factory.mktemp("laptop-pulse")) as machine:
        yield machine
