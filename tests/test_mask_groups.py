"""The analytical engine's grouped execution (blocks padded into a few batched GEMMs) against the dense formula,
for plans whose groups mix sizes, complement blocks and blocks over all rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from locality_core.analytical import analytical_dense, group_blocks, masked_softmax_denoise, plan_mask

SHAPE = (1, 6, 6)


def _data(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _masks() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.meshgrid(np.arange(6), np.arange(6), indexing="ij")
    pix = np.stack([yy.ravel(), xx.ravel()], 1)
    dist2 = ((pix[:, None] - pix[None]) ** 2).sum(-1)
    return {"random half (blocks over all rows)": rng.random((36, 36)) < 0.5,
            "small discs (gathered rows)": dist2 <= 2,
            "large discs (complement blocks)": dist2 <= 20}


@pytest.mark.parametrize("name", list(_masks()))
@pytest.mark.parametrize("batch", [1, 8])
def test_grouped_plan_equals_dense_formula(name, batch):
    mask = _masks()[name]
    plan = plan_mask(mask, SHAPE, tile=2, batch=batch)
    assert len(plan.blocks) == 9 and sum(grp.cols.shape[0] for grp in plan.groups) == 9
    train, x = _data(40, 1), _data(batch, 2)
    got = masked_softmax_denoise(x.flatten(1), 0.7, train.flatten(1), plan, chunk_size=13).view_as(x)
    torch.testing.assert_close(got, analytical_dense(x, 0.7, train, mask), atol=1e-12, rtol=0)


def test_groups_pad_at_most_the_slack():
    plan = plan_mask(_masks()["small discs (gathered rows)"], SHAPE, tile=2, batch=8)
    for members in group_blocks(list(plan.blocks)):
        rows = [len(b.rows) for b in members]
        assert min(rows) >= 0.75 * max(rows)
