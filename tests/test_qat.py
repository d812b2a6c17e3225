"""Quantization-aware fine-tuning (quantization.qat): gradients, the file it writes, what it learns."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from neurcomp.data.volume import VolumeInfo  # noqa: E402
from neurcomp.model.architecture import Architecture  # noqa: E402
from neurcomp.model.neurcomp import Neurcomp  # noqa: E402
from neurcomp.quantization.decode import decode_bytes  # noqa: E402
from neurcomp.quantization.encode import EncoderOptions, encode_model, encode_network, normalized_psnr  # noqa: E402
from neurcomp.quantization.format import TensorCode, parse  # noqa: E402
from neurcomp.quantization.qat import QuantizedTensor, forward_weights, nearest, qat_finetune, stored  # noqa: E402
from neurcomp.training.sampling import VolumeSampler  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _volume(n=12):
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n),) * 3, indexing="ij")
    return np.clip(np.sin(3 * x) * np.cos(2 * y) + 0.5 * z, -1, 1).astype(np.float32)


def _trained(grid, widths=(16, 16, 16), steps=60, bits=4):
    torch.manual_seed(0)
    model = Neurcomp(Architecture(widths=list(widths), residual=True))
    sampler = VolumeSampler(grid, "cpu", seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        coords, targets, _ = sampler.sample(2048)
        loss = torch.mean((model(coords) - targets) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    info = VolumeInfo(shape=grid.shape, spacing=(1.0, 1.0, 1.0), vmin=-1.0, vmax=1.0)
    return model, info, parse(encode_model(model, info, bits, EncoderOptions(quantizer="kmeans")))  # QAT trains codebooks


def test_straight_through_gradients_reach_latent_weights_and_centroids():
    code = TensorCode("codebook", "float16", np.array([-0.5, 0.0, 0.25], np.float32),
                      np.array([0, 1, 2, 2, 1, 0], np.uint16), 2)
    latent = torch.tensor([-0.4, 0.1, 0.3, 0.2, -0.1, -0.6])
    t = QuantizedTensor(code, (2, 3), latent, "cpu")
    w = t()
    assert torch.equal(w.detach().reshape(-1), torch.tensor([-0.5, 0.0, 0.25, 0.25, 0.0, -0.5]))
    (w * torch.arange(6.0).reshape(2, 3)).sum().backward()
    # straight through: each latent weight gets its stored weight's gradient unchanged
    assert torch.equal(t.latent.grad, torch.arange(6.0))
    # each centroid: the sum of the gradients of the weights assigned to it (Deep Compression)
    assert torch.equal(t.values.grad, torch.tensor([0.0 + 5.0, 1.0 + 4.0, 2.0 + 3.0]))


def test_nearest_follows_the_latent_weight_across_a_midpoint():
    c = torch.tensor([0.3, -0.2, 0.0])  # any order
    assert nearest(torch.tensor([-0.11, -0.09, 0.14, 0.16, 9.0]), c).tolist() == [1, 2, 2, 0, 0]
    v = torch.tensor([1.0001], requires_grad=True)
    out = stored(v, "float16")
    assert out.item() == float(np.float16(1.0001)) and out.item() != v.item()
    out.sum().backward()
    assert v.grad.item() == 1.0


def test_file_holds_exactly_the_weights_qat_trained_and_improves_them():
    grid = _volume()
    model, info, net = _trained(grid)
    before = normalized_psnr(decode_bytes(encode_network(net))[0], grid)
    sampler = VolumeSampler(grid, "cpu", seed=1)
    res = qat_finetune(model, net, sampler, 40, lr=1e-3, points_per_step=2048)
    assert res["steps"] == 40 and res["reassigned"] > 0  # weights moved between centroids
    data = encode_network(net)
    decoded = decode_bytes(data)[0]
    for a, b, c in zip(forward_weights(decoded), forward_weights(net), forward_weights(model)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    for w, _ in parse(data).tensors[1:-1]:
        assert w.kind == "codebook" and w.values.size <= 16  # still 4-bit codebooks
    assert normalized_psnr(decoded, grid) > before


def test_last_forward_equals_the_final_code():
    code = TensorCode("codebook", "float16", np.array([-0.5, 0.0, 0.25], np.float32),
                      np.array([0, 1, 2, 2], np.uint16), 2)
    t = QuantizedTensor(code, (4,), torch.tensor([-0.4, 0.1, 0.3, 0.2]), "cpu")
    opt = torch.optim.Adam(t.parameters(), lr=0.07)
    for _ in range(5):
        loss = ((t() - torch.tensor([0.3, -0.3, 0.1, 0.2])) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    np.testing.assert_array_equal(t().detach().numpy(), t.final_code().dequantize())
    assert t.final_code().values.dtype == np.float32
    assert np.array_equal(t.final_code().values.astype(np.float16).astype(np.float32), t.final_code().values)
