"""fV-SRN (Weiss et al. 2022, ``model.fvsrn``) behind the ``Codec`` interface: the ``neurcomp``
codec's training and file, with ``network = fvsrn``: f(x) = MLP([grid(x), x]), sized for the
target file ratio (``quantization.rate_control.fvsrn_for_file_bytes``)."""

from __future__ import annotations

from neurcomp.compressors.base import register_codec
from neurcomp.compressors.neurcomp import NeurcompCodec
from neurcomp.config.options import parse_lr


@register_codec("fvsrn")
class FvsrnCodec(NeurcompCodec):
    """A latent grid + small MLP trained and k-means quantized like Neurcomp, at a target file ratio."""

    network = "fvsrn"

    @classmethod
    def add_cli_args(cls, group):
        group.add_argument("--fvsrn-steps", type=int, default=0,
                           help="training steps (of 1024 x 16 points) per run; 0: the training defaults")
        group.add_argument("--fvsrn-bits", type=int, default=8, help="quantization bits")
        group.add_argument("--fvsrn-lr", type=parse_lr, default=None, help="Adam learning rate (default: auto)")
        group.add_argument("--fvsrn-device", default="auto", help="auto, cpu or cuda")

    @classmethod
    def from_args(cls, args):
        return cls(steps=args.fvsrn_steps, bits=args.fvsrn_bits, lr=args.fvsrn_lr, device=args.fvsrn_device)
