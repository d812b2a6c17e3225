"""The fast training step computes what the plain one does: the written-out input gradient equals
autograd's, micro-batches give the step's gradient, the compiled step trains like the eager one,
and a compiler failure falls back to eager training."""

import numpy as np
import pytest
import torch

from neurcomp.config.options import OptimConfig
from neurcomp.model.architecture import Architecture
from neurcomp.model.neurcomp import Neurcomp
from neurcomp.training.sampling import VolumeSampler
from neurcomp.training.speed import COMPILE_MIN_STEPS, micro_batch_size, should_compile
from neurcomp.training.trainer import Phase, Trainer


@pytest.mark.parametrize("residual", [True, False])
def test_written_out_input_gradient_matches_autograd_and_finite_differences(residual):
    torch.manual_seed(0)
    arch = Architecture(widths=[12, 7, 9], residual=residual, d_in=3, d_out=1, omega_0=30.0)
    model = Neurcomp(arch).double()
    coords = (torch.rand(64, 3, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    pred = model(coords)
    grad_autograd = torch.autograd.grad(pred.sum(), coords, create_graph=True)[0]
    pred2, grad = model(coords, input_gradient=True)
    torch.testing.assert_close(pred2, pred, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, grad_autograd, rtol=1e-10, atol=1e-12)
    assert grad.abs().max() > 0.1  # a non-trivial gradient
    eps = 1e-6
    with torch.no_grad():
        fd = torch.stack([(model(coords + eps * e) - model(coords - eps * e))[:, 0] / (2 * eps)
                          for e in torch.eye(3, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(grad.detach(), fd, rtol=1e-6, atol=1e-8)

    # the gradient loss's parameter gradients: written out = double backward
    target = torch.randn(64, 3, dtype=torch.float64)
    params = list(model.parameters())  # (the output bias does not move the gradient: zero)
    g1 = torch.autograd.grad(((grad - target) ** 2).mean(), params, materialize_grads=True)
    g2 = torch.autograd.grad(((grad_autograd - target) ** 2).mean(), params, materialize_grads=True)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_micro_batch_rule():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert micro_batch_size(0, 16384, 30, cpu) == 16384  # 16384 x 30 floats < 2 MiB
    assert micro_batch_size(0, 16384, 82, cpu) == 4096
    assert micro_batch_size(0, 16384, 165, cpu) == 2048
    assert micro_batch_size(0, 16384, 2000, cpu) == 1024  # never below MIN_MICRO_BATCH
    assert micro_batch_size(0, 16384, 165, cuda) == 16384
    assert micro_batch_size(3000, 16384, 82, cpu) == 3000
    assert micro_batch_size(50000, 16384, 82, cpu) == 16384
    assert should_compile("auto", COMPILE_MIN_STEPS) and not should_compile("auto", COMPILE_MIN_STEPS - 1)
    assert should_compile("on", 1) and not should_compile("off", 10 ** 9)
    with pytest.raises(ValueError, match="compile"):
        should_compile("yes", 10)


def smooth_volume(n=20) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n)] * 3, indexing="ij")
    v = np.sin(3 * x) * np.cos(2 * y) + z ** 2
    return (v / np.abs(v).max()).astype(np.float32)


def train_parameters(grad_lambda: float, steps: int = 12, **trainer_options) -> tuple[torch.Tensor, Trainer]:
    torch.manual_seed(0)
    model = Neurcomp(Architecture.uniform(16, 3))
    sampler = VolumeSampler(smooth_volume(), "cpu", seed=1, with_gradients=grad_lambda > 0)
    optim = OptimConfig(lr=1e-3, batch_size=128, sample_size=16, grad_lambda=grad_lambda)
    trainer = Trainer(model, sampler, Phase("t", steps, optim.lr, 1e9, optim), progress=False, **trainer_options)
    trainer.run()
    return torch.cat([p.detach().flatten() for p in model.parameters()]), trainer


@pytest.mark.parametrize("grad_lambda", [0.0, 0.05])
def test_micro_batches_give_the_same_training(grad_lambda):
    whole, t1 = train_parameters(grad_lambda, micro_batch=0)
    sliced, t2 = train_parameters(grad_lambda, micro_batch=300)  # 2048 points: 6 slices of 300, one of 248
    assert (t1.micro_batch, t2.micro_batch) == (2048, 300)
    torch.testing.assert_close(sliced, whole, rtol=0, atol=1e-5)
    assert not torch.equal(whole, train_parameters(grad_lambda, steps=11)[0])  # the check can tell


@pytest.mark.slow  # compiling takes 10-20 s per graph
def test_compiled_step_trains_like_the_eager_one():
    eager, _ = train_parameters(0.05, micro_batch=1024)
    compiled, trainer = train_parameters(0.05, micro_batch=1024, compile="on")
    assert trainer.compiled
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)


def test_compiler_failure_falls_back_to_eager(monkeypatch, capsys):
    def broken_compile(fn, *args, **kwargs):
        def compiled(*a, **k):
            raise RuntimeError("InductorError: no working C++ compiler found\nlong details")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    eager, _ = train_parameters(0.0)
    fallback, trainer = train_parameters(0.0, compile="on")
    assert not trainer.compiled
    torch.testing.assert_close(fallback, eager, rtol=0, atol=0)
    err = capsys.readouterr().err
    assert "torch.compile failed (RuntimeError: InductorError: no working C++ compiler found)" in err
    assert "long details" not in err
