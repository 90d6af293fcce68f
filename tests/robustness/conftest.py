"""The tiny trained run the robustness tests share: trained once per session, copied by each test that changes it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from medseg_mem.cli import main

#: ``run`` options of the shared run: 2 steps of a 2-level U-Net, validated after each.
TINY_RUN = ["--steps", "2", "--val-every", "1", "--channels", "2,4", "--quiet"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_prepared):
    """One tiny trained ``full`` run (2 steps): its base folder (``runs/``, ``results.csv``) and run id."""
    base = tmp_path_factory.mktemp("trained")
    args = ["run", "--variant", "full", "--data", str(tiny_prepared.root), "--results", str(base / "results.csv"),
            "--runs", str(base / "runs"), *TINY_RUN]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    (run_id,) = [p.name for p in (base / "runs").iterdir()]
    return base, run_id
