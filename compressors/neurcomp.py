"""This toolkit behind the ``Codec`` interface: train + quantize to a target file ratio.

Encoding = training a network sized by ``target_file_ratio`` (``training.file_target``) and writing
the compressed file; the payload is that file's bytes. By default the run uses the toolkit's
defaults, as a user would (``lr = auto``, 75 passes with at least ``min_steps`` steps); ``steps``
and ``lr`` override them for budgeted or hand-tuned comparisons. Decoding = rebuilding the network from the
bytes alone and evaluating it on the grid, on the codec's device (the one training ran on), with
the device synchronised before each clock reading. Training is the encode time, so it dominates.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from neurcomp.compressors.base import Codec, CodecResult, register_codec
from neurcomp.config.options import parse_lr
from neurcomp.model.device import resolve_device


@register_codec("neurcomp")
class NeurcompCodec(Codec):
    """Neurcomp (Lu et al. 2021) + k-means quantization + entropy coding, at a target file ratio."""

    network = "neurcomp"  # the training option network (compressors.fvsrn: "fvsrn")

    def __init__(self, steps: int = 0, n_layers: int = 4, bits: int = 8, lr: float | None = None,
                 pass_decay: float | None = None, lr_decay: float = 0.2, batch_size: int = 1024,
                 sample_size: int = 16, grad_lambda: float = 0.0, device: str = "auto", seed: int = 0):
        # steps = 0: the training defaults; > 0: a budget in steps (a pass of 41^3 is 4 steps of 16k points)
        self.steps, self.n_layers, self.bits = int(steps), int(n_layers), int(bits)
        self.lr = None if lr is None else float(lr)
        self.pass_decay = pass_decay
        self.lr_decay, self.batch_size, self.sample_size = float(lr_decay), int(batch_size), int(sample_size)
        self.grad_lambda = float(grad_lambda)
        self.device, self.seed = device, int(seed)

    def options(self) -> dict:
        return {"network": self.network, "steps": self.steps or "default", "n_layers": self.n_layers, "bits": self.bits,
                "lr": "auto" if self.lr is None else self.lr,
                "lr_decay": self.lr_decay, "grad_lambda": self.grad_lambda,
                "points_per_step": self.batch_size * self.sample_size, "device": self.device}

    def _compress_to_ratio(self, values, target_ratio, *, work_dir):
        from neurcomp.config.options import parse_config
        from neurcomp.training.run import train

        work = Path(work_dir or "benchmarks/results/tmp/neurcomp")
        work.mkdir(parents=True, exist_ok=True)
        np.save(work / "volume.npy", integer_storage(values))
        schedule = []
        if self.steps:  # a budget: that many steps, two decays of lr_decay over the run
            passes = self.steps * self.batch_size * self.sample_size / values.size
            schedule = ["--max_pass", repr(passes), "--pass_decay", repr(self.pass_decay or passes / 3),
                        "--lr_decay", str(self.lr_decay), "--min_steps", str(self.steps)]
        cfg = parse_config([
            "--data", str(work / "volume.npy"), "--basedir", str(work), "--expname", "run",
            "--target_file_ratio", str(target_ratio), "--quant_bits", str(self.bits), "--network", self.network,
            "--n_layers", str(self.n_layers), "--lr", "auto" if self.lr is None else repr(self.lr), *schedule,
            "--batch_size", str(self.batch_size), "--sample_size", str(self.sample_size),
            "--grad_lambda", str(self.grad_lambda),
            "--device", self.device, "--seed", str(self.seed), "--tracking", "none", "--checkpoint_every", "0"])
        device = self.torch_device()
        t0 = time.perf_counter()
        info = train(cfg, progress=False)
        _synchronize(device)
        encode_seconds = time.perf_counter() - t0
        payload = (cfg.experiment_dir / info["file"]).read_bytes()
        t0 = time.perf_counter()
        decoded = self.decompress(payload, values.shape)
        _synchronize(device)
        decode_seconds = time.perf_counter() - t0
        params = {**self.options(), "lr_used": info["lr"], "recoveries": info["recoveries"],
                  "steps_trained": info["steps"], "passes": info["passes"], "widths": info["network_layer_sizes"], "layer_bits": info["file_layer_bits"],
                  "training_seconds": info["training_time_s"], "psnr_before_quantization": info["psnr"],
                  "snapped": info.get("file_snap_to_integers"), "outlier_corrections": info.get("file_outlier_corrections"),
                  "compiled": info.get("compiled"), "compile_graphs": info.get("compile_graphs"),
                  "decode_device": str(device)}
        return CodecResult.build(self.name, target_ratio, payload, decoded, encode_seconds, decode_seconds, params)

    def torch_device(self) -> torch.device:
        """The device training and decoding run on (auto: CUDA when available)."""
        return resolve_device(self.device)

    def decompress(self, payload: bytes, shape: tuple[int, ...]) -> np.ndarray:
        """The decoder's own path (``decode_volume``): the network, then what the file asks for on
        top (snapping to integers, error-bound corrections)."""
        from neurcomp.quantization.decode import decode_volume
        from neurcomp.quantization.format import parse

        net = parse(payload, "<neurcomp payload>")
        if tuple(net.volume.shape) != tuple(shape):
            raise ValueError(f"neurcomp payload holds a {net.volume.shape} volume, not {tuple(shape)}")
        return decode_volume(net, device=self.torch_device())[0]

    @classmethod
    def add_cli_args(cls, group):
        group.add_argument("--neurcomp-steps", type=int, default=0,
                           help="training steps (of 1024 x 16 points) per run; 0: the training defaults")
        group.add_argument("--neurcomp-n-layers", type=int, default=4, help="Neurcomp n_layers")
        group.add_argument("--neurcomp-bits", type=int, default=8, help="quantization bits")
        group.add_argument("--neurcomp-lr", type=parse_lr, default=None, help="Adam learning rate (default: auto)")
        group.add_argument("--neurcomp-grad-lambda", type=float, default=0.0,
                           help="weight of the gradient loss (0: off)")
        group.add_argument("--neurcomp-batch-size", type=int, default=1024,
                           help="batch entries of 16 points per step (1024: the training default)")
        group.add_argument("--neurcomp-device", default="auto", help="auto, cpu or cuda")

    @classmethod
    def from_args(cls, args):
        return cls(steps=args.neurcomp_steps, n_layers=args.neurcomp_n_layers, bits=args.neurcomp_bits,
                   lr=args.neurcomp_lr, grad_lambda=args.neurcomp_grad_lambda, device=args.neurcomp_device,
                   batch_size=args.neurcomp_batch_size)


def integer_storage(values: np.ndarray) -> np.ndarray:
    """``values`` (float32, as every codec receives them) back in uint8 / uint16 when every voxel is a
    whole number in that range: the dtype a scan or a quantized simulation came in, so training
    holds it natively and the encoder may snap to integers (quantization.snap), as for a user's file."""
    if not np.array_equal(values, np.rint(values)):
        return values
    for dtype in (np.uint8, np.uint16):
        if np.iinfo(dtype).min <= values.min() and values.max() <= np.iinfo(dtype).max:
            return values.astype(dtype)
    return values


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock reading covers it (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
