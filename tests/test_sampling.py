"""On-device sampling: trilinear interpolation, coordinates, normalisation, gradients."""

import numpy as np
import pytest
import torch

from neurcomp.data.volume import Volume, denormalize, normalize
from neurcomp.data.volume import VolumeInfo
from neurcomp.model.inference import grid_coordinates, predict_volume
from neurcomp.training.sampling import VolumeSampler


def test_trilinear_exact_at_grid_points():
    rng = np.random.default_rng(0)
    values = rng.random((5, 7, 9), dtype=np.float32)
    sampler = VolumeSampler(values, "cpu")
    coords = grid_coordinates(values.shape, slice(None), "cpu")
    got = sampler.interpolate(coords)[:, 0].numpy().reshape(values.shape)
    np.testing.assert_allclose(got, values, atol=1e-6)


def test_trilinear_midpoint_is_mean_of_neighbours():
    values = np.zeros((2, 2, 2), np.float32)
    values[1, 1, 1] = 8.0
    sampler = VolumeSampler(values, "cpu")
    assert float(sampler.interpolate(torch.zeros(1, 3))) == pytest.approx(1.0)


def test_coordinate_order_is_xyz():
    # a volume that varies only along X (the last numpy axis) must vary with coordinate 0
    values = np.broadcast_to(np.linspace(0, 1, 6, dtype=np.float32), (3, 4, 6)).copy()
    sampler = VolumeSampler(values, "cpu")
    out = sampler.interpolate(torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, 1.0]]))[:, 0]
    assert out.tolist() == pytest.approx([1.0, 0.0])


def test_normalisation_round_trip():
    values = np.array([3.0, 7.5, 230.0], np.float32)
    n = normalize(values, 3.0, 230.0)
    assert n.min() == pytest.approx(-1) and n.max() == pytest.approx(1)
    np.testing.assert_allclose(denormalize(n, 3.0, 230.0), values, rtol=1e-6)
    vol = Volume(values=np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    info = VolumeInfo.from_volume(vol)
    np.testing.assert_allclose(info.denormalize(vol.normalized()), vol.values, atol=1e-5)


def test_gradients_match_finite_differences_of_a_linear_field():
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (6, 7, 8)), indexing="ij")
    values = (0.5 * x - 0.25 * y + 0.1 * z).astype(np.float32)
    sampler = VolumeSampler(values, "cpu", with_gradients=True)
    _, _, grads = sampler.sample(100)
    np.testing.assert_allclose(grads.numpy(), np.tile([0.5, -0.25, 0.1], (100, 1)), atol=1e-5)


def test_sampling_is_reproducible_under_a_seed():
    values = np.random.default_rng(1).random((4, 4, 4), dtype=np.float32)
    a = VolumeSampler(values, "cpu", seed=3).sample(10)[0]
    b = VolumeSampler(values, "cpu", seed=3).sample(10)[0]
    assert torch.equal(a, b)


def test_chunked_inference_matches_one_shot():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    shape = (5, 6, 7)
    whole = predict_volume(model, shape)
    chunked = predict_volume(model, shape, chunk_points=50)
    np.testing.assert_allclose(whole, chunked, atol=1e-6)
    np.testing.assert_allclose(whole.reshape(-1), model(grid_coordinates(shape, slice(None), "cpu")).detach()[:, 0],
                               atol=1e-6)
