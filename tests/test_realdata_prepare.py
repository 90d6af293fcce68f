"""Prepare the real MSD Task04_Hippocampus (260 cases, mixed float32/uint8 images with intensities up to
~1.7e6, float32 labels, a stray .DS_Store) from ``../shared/data`` beside the repository."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

HIPPOCAMPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "Task04_Hippocampus"


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(not HIPPOCAMPUS.is_dir(), reason=f"real data not present at {HIPPOCAMPUS}")
def test_prepare_hippocampus(tmp_path):
    from medseg_mem.core.prepare_config import PrepareConfig
    from medseg_mem.data.prepare import prepare
    from medseg_mem.data.prepared import PreparedDataset

    summary = prepare(PrepareConfig(task_dir=HIPPOCAMPUS, out_dir=tmp_path / "prepared"), progress=False)
    assert summary.n_cases == 260 and summary.split_sizes == (156, 52, 52)
    data = PreparedDataset.open(tmp_path / "prepared")
    assert data.num_classes == 3 and data.class_names == ["background", "Anterior", "Posterior"]
    assert data.in_channels == 1
    ids = data.ids("train") + data.ids("val") + data.ids("test")
    assert len(set(ids)) == 260
    for case_id in ids:
        case = data.load(case_id)
        assert case.label.dtype == np.uint8 and set(np.unique(case.label)) <= {0, 1, 2}
        assert case.image.dtype == np.float32 and np.isfinite(case.image).all()
        assert np.abs(case.image).max() < 100, f"{case_id} is not normalised"
        assert case.image.shape[1:] == case.label.shape[1:]
    assert set(np.unique(data.load(ids[0]).label)) == {0, 1, 2}
