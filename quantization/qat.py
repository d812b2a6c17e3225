"""Quantization-aware fine-tuning (QAT): train through the file's own quantization.

The encoder stores each hidden weight matrix as a codebook c (2^B centroids, float16) and one index
per weight; ``finetune_codebooks`` (Han et al. 2016, Deep Compression, sec. 3) then trains the
centroids with the indices fixed. QAT also keeps the full-precision ("latent") weights W and lets
every weight change its centroid: the forward pass uses the stored value, nearest centroid of the
latent weight, and the backward pass sends the gradient both to the centroid (Deep Compression's
dL/dc_k = sum over the weights assigned to k of dL/dW_i) and, straight through the rounding, to the
latent weight (the straight-through estimator of quantization-aware training: Bengio et al. 2013;
Jacob et al. 2018, "Quantization and training of neural networks for efficient integer-arithmetic-
only inference", sec. 3):

    a_i = argmin_k |W_i - c_k|                           (re-assigned at every step)
    W_q = c[a] + (W - W.detach())                        (value c[a]; dL/dW = dL/dW_q, dL/dc from c[a])

Stored float16 values (centroids, raw first/last layers, biases) are rounded the same way
(v + (fp16(v) - v).detach()), so the weights the trained codes compute are exactly the file's. The codes start
from the encoder's file (its k-means, its per-layer bits from rate control) and are written back
into it: nothing is re-clustered. Re-running k-means from scratch every N steps was tried first and
lost the training in between: a fresh k-means of the moved latent weights lands on a different
codebook than the one the network had adapted to.

Measured (``benchmarks/qat_bench.py``, docs/quantization.md "Quantization-aware fine-tuning"): at
equal extra steps and file size it never beats fixed-assignment fine-tuning or plain extra
training, so the training run does not use it; it is kept as the measured implementation.

``quantization`` never imports ``training``: the sampler is any object with ``device`` and
``sample(n) -> (coords, targets, grads)`` (``training.sampling``).
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from neurcomp.model.neurcomp import Neurcomp
from neurcomp.quantization.encode import frequency_order, load_into
from neurcomp.quantization.format import CompressedNetwork, TensorCode


def stored(values: torch.Tensor, dtype: str) -> torch.Tensor:
    """``values`` as the file stores them (float16-rounded or exact), gradient straight through."""
    if dtype != "float16":
        return values
    return values + (values.detach().half().float() - values.detach())


def nearest(latent: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index (into ``centroids``, any order) of the nearest centroid of each latent weight."""
    if centroids.numel() == 1:
        return torch.zeros(latent.shape, dtype=torch.long, device=latent.device)
    sorted_c, order = torch.sort(centroids.detach())
    mids = 0.5 * (sorted_c[:-1] + sorted_c[1:])
    return order[torch.bucketize(latent.detach(), mids, right=False)]


class QuantizedTensor(nn.Module):
    """One stored tensor: raw values (trained as they are stored) or a codebook with latent weights."""

    def __init__(self, code: TensorCode, shape, latent: torch.Tensor | None, device):
        super().__init__()
        self.code, self.shape = code, tuple(shape)
        self.values = nn.Parameter(torch.tensor(code.values, dtype=torch.float32, device=device))
        self.latent = None
        if code.kind == "codebook":
            start = latent.detach().reshape(-1) if latent is not None else self.values.detach()[
                torch.as_tensor(code.indices.astype(np.int64), device=device)]
            self.latent = nn.Parameter(start.to(device=device, dtype=torch.float32).clone())

    def forward(self) -> torch.Tensor:
        v = stored(self.values, self.code.dtype)
        if self.latent is None:
            return v.reshape(self.shape)
        w = v[nearest(self.latent, v)]
        return (w + (self.latent - self.latent.detach())).reshape(self.shape)

    def final_code(self) -> TensorCode:
        """The tensor as the file will hold it after training (what ``forward`` computes)."""
        v = stored(self.values, self.code.dtype).detach()
        values = v.cpu().numpy().astype(np.float32)
        if self.latent is None:
            return replace(self.code, values=values)
        idx = nearest(self.latent, v).cpu().numpy().astype(np.uint16)
        return frequency_order(replace(self.code, values=values, indices=idx))


def qat_finetune(model: Neurcomp, net: CompressedNetwork, sampler, steps: int, *, lr: float,
                 points_per_step: int = 16384, latent_lr_scale: float = 1.0, log=None) -> dict:
    """``steps`` Adam steps (learning rate ``lr``) of the MSE on ``sampler`` batches through the
    quantization of ``net`` (a file's network, e.g. ``quantization.format.parse`` of
    ``encode_to_size``'s bytes), starting from ``model``'s latent weights (the network that was
    quantized; the latent weights learn at ``lr * latent_lr_scale``). ``net``'s tensors are
    replaced in place by the trained codes and ``model`` gets their decoded weights;
    ``encode_network(net)`` then writes the file.

    Returns {"steps", "seconds", "reassigned"} (weights whose centroid changed)."""
    t0 = time.perf_counter()
    device = sampler.device
    shapes = net.arch.linear_shapes()
    coded = nn.ModuleList()
    for (o, i), lin, (w, b) in zip(shapes, model.linears(), net.tensors):
        coded.append(QuantizedTensor(w, (o, i), lin.weight, device))
        coded.append(QuantizedTensor(b, (o,), None, device))
    shadow = Neurcomp(net.arch).to(device)
    linears = shadow.linears()
    for lin in linears:  # plain tensors recomputed from the codes at every step
        del lin.weight, lin.bias
    latent = [t.latent for t in coded if t.latent is not None]
    stored_values = [t.values for t in coded]
    opt = torch.optim.Adam([{"params": stored_values, "lr": lr},
                            {"params": latent, "lr": lr * latent_lr_scale}], lr=lr)
    shadow.train()
    for _ in range(int(steps)):
        for k, lin in enumerate(linears):
            lin.weight = coded[2 * k]()
            lin.bias = coded[2 * k + 1]()
        coords, targets, _ = sampler.sample(points_per_step)
        loss = torch.mean((shadow(coords) - targets) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    reassigned = 0
    tuned = []
    for k, (w, b) in enumerate(net.tensors):
        new_w, new_b = coded[2 * k].final_code(), coded[2 * k + 1].final_code()
        if w.kind == "codebook":
            reassigned += int(np.count_nonzero(
                np.argsort(np.argsort(w.values))[w.indices.astype(np.int64)]
                != np.argsort(np.argsort(new_w.values))[new_w.indices.astype(np.int64)]))
        tuned.append((new_w, new_b))
    net.tensors = tuned
    load_into(model, net)
    result = {"steps": int(steps), "seconds": time.perf_counter() - t0, "reassigned": reassigned}
    if log:
        log(f"quantization-aware fine-tuning: {steps} steps, {reassigned} weights moved to another centroid, "
            f"{result['seconds']:.1f} s")
    return result


def forward_weights(model_or_net) -> list[np.ndarray]:
    """The weight matrices a network or a CompressedNetwork computes with (float32, flattened)."""
    if isinstance(model_or_net, CompressedNetwork):
        return [w.dequantize().reshape(-1) for w, _ in model_or_net.tensors]
    return [lin.weight.detach().cpu().numpy().reshape(-1) for lin in model_or_net.linears()]
