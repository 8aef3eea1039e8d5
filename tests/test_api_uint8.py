"""The API takes the uint8 images ``npz:`` takes (NCHW, NHWC, NHW; divided by 255), with the same numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import flatcli.api as fr


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 5 * 4, 8), nn.ReLU(), nn.Linear(8, 4))


def test_uint8_arrays_read_as_npz_reads_them(net, tmp_path):
    rng = np.random.RandomState(0)
    nhwc = rng.randint(0, 256, (6, 5, 4, 3), dtype=np.uint8)
    y = np.arange(6) % 4
    floats = torch.from_numpy(nhwc).permute(0, 3, 1, 2).float() / 255
    reference = fr.sharpness(net, (floats, torch.from_numpy(y)), device="cpu").samples
    np.savez(tmp_path / "d.npz", x=nhwc, y=y)
    from_file = fr.sharpness(net, f"npz:{tmp_path / 'd.npz'}", device="cpu").samples
    for x in (nhwc, nhwc.transpose(0, 3, 1, 2), torch.from_numpy(nhwc.transpose(0, 3, 1, 2).copy())):
        rows = fr.sharpness(net, (x, y), device="cpu").samples
        assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in reference], rel=1e-6)
        assert [r["loss"] for r in rows] == [r["loss"] for r in from_file]


def test_other_integer_images_are_still_refused(net):
    from flatcli.errors import DataError

    with pytest.raises(DataError, match="expected floating images"):
        fr.sharpness(net, (np.zeros((2, 3, 5, 4), dtype=np.int64), np.zeros(2, dtype=np.int64)), device="cpu")
