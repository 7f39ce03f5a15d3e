from __future__ import annotations

import pytest
import torch

from medood.inferers import OODInferer
from medood.utils.reduce import reduce_map, reduce_slices


def test_reductions_by_hand() -> None:
    m = torch.zeros(2, 1, 4, 5, 6)
    m[0, 0, 1, 2, 3] = 5.0
    m[0, 0, 0, 0, 0] = 1.0
    m[1, 0, :, :, 0] = 1.0
    torch.testing.assert_close(reduce_map(m, "max"), torch.tensor([5.0, 1.0]))
    torch.testing.assert_close(reduce_map(m, "mean"), torch.tensor([6.0 / 120, 20.0 / 120]))
    torch.testing.assert_close(reduce_map(m, "topk", k=2), torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(reduce_map(m, "topk", k=0.02), torch.tensor([2.0, 1.0]))  # ceil(0.02 * 120) = 3 voxels
    mask = torch.zeros_like(m, dtype=torch.bool)
    mask[..., 0] = True
    torch.testing.assert_close(reduce_map(m, "mean", mask=mask), torch.tensor([1.0 / 20, 1.0]))
    empty = torch.zeros_like(mask)
    torch.testing.assert_close(reduce_map(m, "max", mask=empty), torch.zeros(2))
    with pytest.raises(ValueError):
        reduce_map(m, "median")


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_slice_scores_along_any_axis(axis: int) -> None:
    m = torch.rand(2, 1, 4, 5, 6)
    s = reduce_slices(m, axis, "max")
    ax = axis % 3
    assert s.shape == (2, m.shape[2 + ax])
    torch.testing.assert_close(s, m.amax(dim=tuple(d for d in (1, 2, 3, 4) if d != 2 + ax)))
    means = reduce_slices(m, axis, "mean")
    torch.testing.assert_close(means, m.mean(dim=tuple(d for d in (1, 2, 3, 4) if d != 2 + ax)))


def test_topk_slices_use_each_slice_foreground() -> None:
    m = torch.arange(24, dtype=torch.float32).reshape(1, 1, 2, 3, 4)
    mask = m > 5
    s = reduce_slices(m, 0, "topk", k=0.5, mask=mask)  # slice 0 has 6..11 (6 voxels), slice 1 12..23 (12 voxels)
    torch.testing.assert_close(s, torch.tensor([[(11 + 10 + 9) / 3, sum(range(18, 24)) / 6]]))


def _map_net(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5).abs().mean(1, keepdim=True)


def test_sliding_window_matches_whole_image_for_a_local_network() -> None:
    x = torch.rand(2, 1, 20, 18, 12)
    whole = OODInferer(roi_size=None)(x, _map_net)
    tiled = OODInferer(roi_size=(8, 8, 8), sw_batch_size=3, overlap=0.5, mode="constant")(x, _map_net)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)


def test_slice_wise_2d_network_on_volumes_and_infer_outputs() -> None:
    x = torch.rand(1, 1, 10, 12, 7)
    calls = []

    def net2d(s: torch.Tensor) -> torch.Tensor:
        assert s.ndim == 4, "SliceInferer feeds 2D slices"
        calls.append(s.shape[0])
        return _map_net(s)

    inf = OODInferer(slice_axis=2, slice_axes=(0, 2), slice_reduction="max")
    res = inf.infer(x, net2d)
    torch.testing.assert_close(res.anomaly_map, _map_net(x))
    assert sum(calls) == 7
    torch.testing.assert_close(res.volume_score, _map_net(x).amax(dim=(1, 2, 3, 4)))
    assert set(res.slice_scores) == {0, 2}
    assert res.slice_scores[2].shape == (1, 7)


def test_inferer_rejects_non_map_networks() -> None:
    inf = OODInferer()
    with pytest.raises(ValueError, match="does not match"):
        inf(torch.rand(1, 1, 8, 8), lambda x: torch.rand(1, 2, 8, 8))
    with pytest.raises(TypeError, match="one anomaly map"):
        inf(torch.rand(1, 1, 8, 8), lambda x: (x, x))
    with pytest.raises(ValueError):
        OODInferer(slice_reduction="median")
