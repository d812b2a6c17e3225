"""Fitting a latent-grid network (``model.latent_grid``) to one volume at a target file size.

The loss is D / var(x) + lambda R / N: the mean squared error relative to the volume's variance
(so the same lambda means the same trade-off on every volume) plus lambda times the latents' bits
per voxel. lambda is not searched: it is a Lagrange multiplier updated by dual ascent,

    log lambda <- log lambda + gain * clip(R / R_target - 1, -1, 1),

so one training lands at the target's rate, where a search over lambda would train several
networks. The first (1 - ste_share) of the steps train with noise in place of rounding; the rest
with rounding (straight-through gradient) and the synthesis weights at their stored precision, so
the last steps train on what the file decodes to. If the coded file still exceeds the target, a
few more rounded steps run with lambda raised (1.3x twice, then 2x) until it fits.

``stop`` (a callable, checked between two steps) ends the main steps early with ``FitStopped``,
which holds everything ``fit(..., resume=state)`` needs to continue exactly where it stopped:
the network, Adam's moments, lambda, the step, the random streams and the history.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from neurcomp.model.latent_grid import LatentGrid
from neurcomp.quantization import latent_format

ANS_SLACK_BYTES = 8  # the coder's last word, and the rate estimate's small optimism
MAX_EXTRA_ROUNDS = 10
MAX_LAMBDA = 1e6  # far above any lambda a fit that reaches its rate needs; keeps the loss finite
SHRINK_ABOVE = 0.5  # the weights' share of the file above which a smaller network is used
SMALL_SHARE = 0.25  # ... the first of SMALLER_WIDTHS whose weights take at most this share
SMALLER_WIDTHS = (16, 8, 4)  # synthesis widths without a context, capped at the options' width
COLLAPSE_MSE = 0.9  # a decoded MSE above this share of the variance: no better than the mean (0.46 dB)
MAX_RESTARTS = 2
RESTART_SEED_STEP = 1000
RATE_MARGIN = 0.985  # the controller aims this far under the budget: its rate oscillates about the aim


@dataclass
class LatentFitOptions:
    steps: int = 0  # 0: default_steps, by the volume's size (docs/latent_grid.md: 1500 beat 800, 3000 beat 1500)
    lr: float = 1e-2  # the synthesis and the entropy model
    latent_lr: float = 0.05  # Adam moves a latent about lr a step: integers need larger steps
    levels: int = 0  # 0: halve until the coarsest grid is 2 samples thick
    finest: int = 1  # the finest grid at 1 / 2^finest of the volume's resolution (0 lost on both)
    channels: int = 1
    hidden: int = 16
    layers: int = 2
    weight_bits: int = 8
    context_hidden: int = 16  # 0: factorized entropy model; else the coarse-level context's width
    skip: int = 1  # a linear path from the latents to the value beside the MLP (the pyramid start needs it)
    upsampler: str = "cubic"  # the cubic B-spline (model.latent_grid; docs/latent_grid.md, seventh round), or "linear"
    init: str = "pyramid"  # a spline pyramid of the volume at the target rate (needs skip), or "zero" latents
    init_alpha: float = 1.0  # the pyramid's steps shrink 2^alpha per coarser level
    warmup: float = 0.1  # the share of the steps over which the synthesis' lr rises from 0: Adam's first
    # steps, each about lr, would otherwise move the pyramid start's MLP far off (nucleon 48.12 -> 49.74 dB)
    ste_share: float = 0.2
    points_per_step: int = 1 << 18
    sample: str = "voxels"  # a larger volume's step: random voxels, or "lattice": random z, y and x rows (cubic only)
    lambda0: float = 1e-2
    lambda_gain: float = 0.05
    seed: int = 0
    device: str = "cpu"


SMALL_VOLUME_STEPS = 3000  # volumes up to SMALL_VOLUME_VOXELS (docs/latent_grid.md, ninth round)
SMALL_VOLUME_VOXELS = 1 << 19
LARGE_VOLUME_STEPS = 1500  # a step costs the whole volume's upsampling: 128^3 in 222 s, within 5 minutes


def default_steps(num_voxels: int) -> int:
    """Steps where the options leave them to the volume: twice as many where each is cheap. In the
    rate-distortion benchmark, 3000 against 1500 steps on the seven volumes up to 2^19 voxels:
    six ahead at ratio 200 (mean +0.91 dB), even at 800 (mean -0.02); 1500 steps on a 128^3
    volume take 222 s (docs/latent_grid.md, ninth round)."""
    return SMALL_VOLUME_STEPS if num_voxels <= SMALL_VOLUME_VOXELS else LARGE_VOLUME_STEPS


class FitStopped(Exception):
    """``fit`` stopped between two steps at ``stop``'s request; ``state`` resumes it (``fit(resume=)``)."""

    def __init__(self, state: dict):
        super().__init__(f"latent-grid fit stopped at step {state['step']}")
        self.state = state


def overhead_bytes(model: LatentGrid) -> int:
    """Everything in the file but the latents' ANS words, measured on the model's own encoding."""
    with torch.no_grad():
        saved = [p.detach().clone() for p in model.latents]
        for p in model.latents:
            p.zero_()
        size = len(latent_format.encode(model, 0.0, 1.0))
        for p, s in zip(model.latents, saved):
            p.copy_(s)
    return size + ANS_SLACK_BYTES


def sized_model(shape, budget_bytes: int, o: LatentFitOptions) -> LatentGrid:
    """The options' network, or, where its weights would take over SHRINK_ABOVE of the file, the
    first of SMALLER_WIDTHS without the context whose weights take at most SMALL_SHARE
    (else the smallest). Measured on nucleon at ratio 200 (1378 bytes): 35.16 dB with the 1069
    bytes of the default's weights, 36.66 without the context (497), 38.18 at width 8 too (225)."""
    def build(hidden: int, context_hidden: int) -> LatentGrid:
        torch.manual_seed(o.seed)  # every candidate starts as a direct build of its sizes would
        return LatentGrid(shape, o.levels, o.channels, hidden, o.layers, o.weight_bits, o.finest,
                          context_hidden, bool(o.skip), o.upsampler)

    model = build(o.hidden, o.context_hidden)
    if overhead_bytes(model) <= SHRINK_ABOVE * budget_bytes:
        return model
    for hidden in SMALLER_WIDTHS:
        model = build(min(hidden, o.hidden), 0)
        if overhead_bytes(model) <= SMALL_SHARE * budget_bytes:
            break
    return model


def fit(values: np.ndarray, budget_bytes: int, options: LatentFitOptions | None = None, *,
        progress: bool = False, stop=None, resume: dict | None = None) -> tuple[LatentGrid, float, float, dict]:
    """Train on ``values`` (3D float array) for a file of at most ``budget_bytes``; returns the
    network, the value range (vmin, vmax) and a report. ``stop`` / ``resume``: see the module.

    A fit that ends no better than the volume's mean (decoded MSE above COLLAPSE_MSE of the
    variance: seen on bucky at ratio 100 with the cubic upsampler and an 8-wide synthesis, whose
    ReLUs had all died) starts again from another seed, at most MAX_RESTARTS times; if every start
    collapses, the error says so rather than writing a file no better than the mean."""
    o = options or LatentFitOptions()
    restart = resume.get("restart", 0) if resume is not None else 0
    seconds = 0.0
    while True:
        model, vmin, vmax, report = _fit_once(values, budget_bytes, o, restart, progress, stop, resume)
        resume = None
        seconds += report["train_seconds"]
        if report["relative_mse"] <= COLLAPSE_MSE:
            return model, vmin, vmax, {**report, "train_seconds": seconds}
        if restart >= MAX_RESTARTS:
            from neurcomp.training.recovery import TrainingDiverged
            raise TrainingDiverged(f"the latent-grid fit ended no better than the volume's mean in {restart + 1} starts "
                                   f"(decoded MSE {report['relative_mse']:.2f} of the variance); nothing was written: "
                                   "lower the ratio")
        restart += 1


def _fit_once(values, budget_bytes: int, o: LatentFitOptions, restart: int, progress: bool, stop,
              resume: dict | None):
    """One fit from seed ``o.seed + RESTART_SEED_STEP * restart`` (its ``FitStopped`` state keeps
    ``o`` and ``restart``, so that a resumed fit checks the user's options and continues the same start)."""
    from tqdm import tqdm

    user_options = o
    o = replace(o, seed=o.seed + RESTART_SEED_STEP * restart)
    torch.manual_seed(o.seed)
    device = torch.device(o.device)
    vmin, vmax = float(np.min(values)), float(np.max(values))
    target = torch.from_numpy(((np.asarray(values, np.float64) - vmin) / (vmax - vmin) * 2 - 1).astype(np.float32))
    target = target.reshape(-1).to(device)
    n = target.numel()
    if o.steps <= 0:
        o = replace(o, steps=default_steps(n))
    variance = max(float(target.var()), 1e-12)
    model = sized_model(values.shape, budget_bytes, o).to(device)
    target_bits = 8.0 * (budget_bytes - overhead_bytes(model)) * RATE_MARGIN
    if target_bits <= 0:
        from neurcomp.config.errors import InputError
        raise InputError(f"a {budget_bytes}-byte file cannot hold a latent-grid network of this size "
                         f"(its weights and header take {overhead_bytes(model)} bytes); lower the ratio")
    if o.init not in ("zero", "pyramid"):
        raise ValueError(f"latent init must be zero or pyramid, not {o.init!r}")
    if o.init == "pyramid" and resume is None:  # a resumed fit loads its latents (and gains) below
        from neurcomp.training.latent_init import pyramid_init

        pyramid_init(model, target.view(values.shape), target_bits, o.init_alpha)
    # the entropy model's log b follows the latents' spread at the latents' pace
    context = list(model.context.parameters()) if model.context is not None else []
    synthesis = list(model.synthesis.parameters()) + (list(model.skip.parameters()) if model.skip is not None else [])
    optimizer = torch.optim.Adam([{"params": [*model.latents, model.log_scale], "base_lr": o.latent_lr},
                                  {"params": synthesis + context, "base_lr": o.lr}], lr=o.lr)
    generator = torch.Generator(device=device).manual_seed(o.seed)
    log_lambda = math.log(o.lambda0)
    ste_from = int(round(o.steps * (1 - o.ste_share)))
    t0 = time.perf_counter()
    history, start = [], 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        log_lambda, start, history = resume["log_lambda"], resume["step"], list(resume["history"])
        generator.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        t0 -= resume["seconds"]

    def state(step: int) -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "log_lambda": log_lambda,
                "step": step, "history": history, "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(), "seconds": time.perf_counter() - t0,
                "options": asdict(user_options), "restart": restart}

    if o.sample not in ("voxels", "lattice"):
        raise ValueError(f"latent sample must be voxels or lattice, not {o.sample!r}")
    lattice = o.sample == "lattice" and model.upsampler == "cubic"
    side = [max(1, min(s, round(s * (o.points_per_step / n) ** (1 / 3)))) for s in values.shape]

    def sampled_features():
        """This step's voxels and the function of the latents that gives their features."""
        if n <= o.points_per_step:
            return slice(None), model.features
        if lattice:  # every voxel equally likely, spread over the volume, at the sample's cost
            rows = [torch.randperm(s, device=device, generator=generator)[:k].sort().values
                    for s, k in zip(values.shape, side)]
            index = ((rows[0][:, None, None] * values.shape[1] + rows[1][None, :, None]) * values.shape[2]
                     + rows[2][None, None, :]).reshape(-1)
            return index, lambda y: model.features_on(y, rows)
        # sorted: the same sample, gathered and scattered in memory order
        index = torch.randint(n, (o.points_per_step,), device=device, generator=generator).sort().values
        return index, lambda y: model.features_at(y, index)

    def decoded_psnr(features_of, ref) -> float:
        """PSNR of what the file would decode to (rounded latents, stored-precision weights) at the
        step's voxels: the noise phase's training PSNR is not the file's."""
        with torch.no_grad():
            saved, model.quantized_weights = model.quantized_weights, True
            pred = model.synthesize(features_of(model.quantized("round")))
            model.quantized_weights = saved
            return 10 * math.log10(4.0 / max(float(torch.mean((pred - ref) ** 2)), 1e-20))

    def train(steps: int, first: int, total: int):
        nonlocal log_lambda
        bar = tqdm(range(steps), desc="latent grid", disable=not progress, leave=False)
        for i in bar:
            step = first + i
            if stop is not None and stop():
                raise FitStopped(state(step))
            mode = "noise" if step < ste_from else "ste"
            model.quantized_weights = mode == "ste"
            decay = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
            warm = min(1.0, (step + 1) / max(1.0, o.warmup * total))
            for g, w in zip(optimizer.param_groups, (1.0, warm)):
                g["lr"] = g["base_lr"] * decay * w
            y_hat = model.quantized(mode)
            index, features_of = sampled_features()
            pred, ref = model.synthesize(features_of(y_hat)), target[index]
            mse = torch.mean((pred - ref) ** 2)
            bits = model.rate_bits(y_hat)
            loss = mse / variance + math.exp(log_lambda) * bits / n
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if mode == "noise":  # the controller follows the rounded latents' rate: the file's
                with torch.no_grad():
                    bits = model.rate_bits(model.quantized("round"))
            excess = float(bits.detach()) / target_bits - 1.0
            log_lambda = min(log_lambda + o.lambda_gain * max(-1.0, min(1.0, excess)), math.log(MAX_LAMBDA))
            if step % 50 == 0 or i == steps - 1:
                train_psnr = 10 * math.log10(4.0 / max(float(mse.detach()), 1e-20))
                psnr = decoded_psnr(features_of, ref)
                history.append({"step": step, "psnr": psnr, "train_psnr": train_psnr, "bits": float(bits.detach()),
                                "lambda": math.exp(log_lambda), "seconds": time.perf_counter() - t0})
                bar.set_postfix(psnr=f"{psnr:.2f}", kbytes=f"{float(bits.detach()) / 8e3:.2f}")

    train(o.steps - start, start, o.steps)
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):  # seen: NaN weights at 1500 steps
        from neurcomp.training.recovery import TrainingDiverged
        raise TrainingDiverged(f"the latent-grid fit diverged (non-finite weights after {o.steps} steps); "
                               "nothing was written")
    extra = 0
    for attempt in range(MAX_EXTRA_ROUNDS):  # over the target after rounding: more rounded steps, lambda raised
        if len(latent_format.encode(model, vmin, vmax)) <= budget_bytes:
            break
        log_lambda = min(log_lambda + math.log(1.3 if attempt < 2 else 2.0), math.log(MAX_LAMBDA))  # gently, then fast
        more = max(20, o.steps // 20)
        train(more, o.steps + extra, o.steps + extra + more)
        extra += more
    else:
        size = len(latent_format.encode(model, vmin, vmax))
        if size > budget_bytes:
            from neurcomp.config.errors import InputError
            raise InputError(f"the latent-grid fit ended at {size} bytes, over its {budget_bytes}-byte budget after "
                             f"{extra} extra steps (its weights and header alone take {overhead_bytes(model)}): "
                             "lower the ratio")
    model.quantized_weights = True
    with torch.no_grad():
        relative_mse = float(torch.mean((model("round").reshape(-1) - target) ** 2)) / variance
    report = {"options": asdict(user_options), "model": model.describe(), "train_seconds": time.perf_counter() - t0,
              "steps": o.steps, "extra_steps": extra, "target_bits": target_bits, "history": history,
              "restart": restart, "seed": o.seed, "relative_mse": relative_mse}
    return model.cpu(), vmin, vmax, report
