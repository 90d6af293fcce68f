"""The tiny trained run the robustness tests share: the session's, copied by each test that changes it."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def trained(trained_runs):
    """The session's tiny trained ``full`` run (2 steps): its base folder (``runs/``, ``results.csv``) and run id."""
    run = trained_runs("full")
    return run.parent.parent, run.name
