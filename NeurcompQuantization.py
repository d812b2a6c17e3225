"""Quantize a trained Neurcomp network into a compressed file.

    python NeurcompQuantization.py --config experiments/<exp>/config.txt --filename <name> --quant_bits <B>

Options: the shared ones (config/options.py) plus the "compressed file" group (quantization/cli.py).
``--max_abs_error E`` / ``--max_rel_error R`` (shared options) add the corrections that keep every
voxel of ``--data`` within the bound, verified before the file is written (quantization/bounded.py);
without ``--quant_bits`` on the command line the index bits that make the smallest file (network
plus corrections) are chosen (``bounded.smallest_bounded``). A latent-grid run's checkpoint
(``network = latent``) is re-encoded with a bound only: its file plus the corrections
(``bounded.encode_latent_bounded``), by default ``<expname>_bounded.nclg``.
The orchestration lives here, above both packages: it reads training's checkpoint and, for
``--finetune_passes``, samples the volume with training's sampler; quantization itself does not
import training.
"""

import math
import sys
import time
from pathlib import Path

import torch

from neurcomp.config.cli import run_cli
from neurcomp.config.errors import ConfigError, InputError
from neurcomp.config.options import build_parser, config_from_namespace, parse_namespace
from neurcomp.model.device import resolve_device
from neurcomp.quantization.cli import (CHECKPOINT_NAME, DEFAULT_SUFFIX, add_quantization_arguments, atomic_write_bytes,
                              human_bytes, itemsize, stored_compression)
from neurcomp.data.atomic import check_output_file


def quantize_main(argv=None, parser=None) -> dict:
    """Quantize ``<experiment_dir>/checkpoint.pt`` into a compressed file; returns a summary dict."""
    from neurcomp.quantization.encode import EncoderOptions, encode_network, finetune_codebooks, quantize_network
    from neurcomp.training.checkpoint import model_from_state, read_checkpoint
    from neurcomp.training.latent_run import is_latent_checkpoint

    if parser is None:
        parser = add_quantization_arguments(build_parser("Quantize a trained Neurcomp network into a compressed file"))
    ns = parse_namespace(parser, argv)
    cfg = config_from_namespace(ns)
    src = cfg.source
    if not 0 <= ns.finetune_passes < math.inf:  # also NaN; inf passes would never end
        raise ConfigError(f"{src}: finetune_passes = {ns.finetune_passes!r} is invalid: must be a finite number >= 0")
    if not 0 < ns.finetune_lr < math.inf:
        raise ConfigError(f"{src}: finetune_lr = {ns.finetune_lr!r} is invalid: must be a finite number > 0")
    bits = cfg.quant_bits
    if ns.output:
        out = check_output_file(Path(ns.output), "--output")
    else:
        out = check_output_file(cfg.experiment_dir / (ns.filename or f"{cfg.expname}_{bits}bit{DEFAULT_SUFFIX}"),
                                "--filename")
    checkpoint = cfg.experiment_dir / CHECKPOINT_NAME
    if not checkpoint.is_file():
        raise InputError(f"{checkpoint}: checkpoint not found (train the experiment first, or check --basedir/--expname)")
    t0 = time.perf_counter()
    state = read_checkpoint(checkpoint)
    if is_latent_checkpoint(state) and cfg.error_bound:
        return _quantize_latent(cfg, ns, state, checkpoint, t0)
    model, info, _ = model_from_state(state, checkpoint)
    options = EncoderOptions(codebook_dtype=ns.codebook_dtype, bias=ns.bias_format,
                             quantize_first_last=ns.quantize_first_last, raw_dtype=ns.first_last_dtype,
                             compression=ns.entropy_coder, quantizer=ns.quantizer)
    net = quantize_network(model, info, bits, options, seed=ns.kmeans_seed, source=str(checkpoint))
    finetune = _finetune(cfg, ns, model, net, info, finetune_codebooks) if ns.finetune_passes > 0 else None
    bound = None
    if cfg.error_bound and finetune is None and "quant_bits" not in getattr(ns, "_cli_keys", ()):
        # a bound and no --quant_bits: the index bits of the smallest file, network plus corrections
        data, bound = _smallest_bounded(cfg, model, info, options, ns.kmeans_seed, str(checkpoint))
        bits = bound["bits"]
        if not ns.output and not ns.filename:
            out = check_output_file(cfg.experiment_dir / f"{cfg.expname}_{bits}bit{DEFAULT_SUFFIX}", "--filename")
    elif cfg.error_bound:  # corrections against the volume, verified at every voxel
        data, bound = _bounded(cfg, net, info)
    else:
        data = encode_network(net)
    snapped = _snap(cfg, net, data, info) if ns.snap_to_integers and not bound else None
    if snapped:
        data = snapped
    seconds = time.perf_counter() - t0

    atomic_write_bytes(out, data, "--output" if ns.output else "--filename")
    num_voxels = info.num_voxels
    summary = {"file": str(out), "file_bytes": len(data), "bits": bits,
               "compression_ratio": num_voxels * 4 / len(data),
               "compression_ratio_vs_source_dtype": num_voxels * itemsize(info.source_dtype) / len(data),
               "source_dtype": info.source_dtype, "seconds": seconds,
               "entropy_coder": stored_compression(data), "finetune": finetune, "error_bound": bound,
               "snap_to_integers": snapped is not None}
    print(f"wrote {out}: {human_bytes(len(data))}, {bits}-bit indices, payload coding {summary['entropy_coder']}")
    print(f"compression ratio {summary['compression_ratio']:.1f} (vs {num_voxels} float32 voxels), "
          f"{summary['compression_ratio_vs_source_dtype']:.1f} vs the original {info.source_dtype} volume")
    if bound:
        print(f"error bound {bound['max_abs_error_bound']:.6g} ({bound['error_bound_mode']} "
              f"{bound['error_bound_requested']:g}): {bound['corrections']} corrections, verified max abs error "
              f"{bound['max_abs_error_verified']:.6g}")
    print(f"time {seconds:.2f} s")
    return summary


def _quantize_latent(cfg, ns, state: dict, checkpoint: Path, t0: float) -> dict:
    """A latent-grid network's file with the corrections of ``max_abs_error`` / ``max_rel_error``."""
    from neurcomp.data.volume import VolumeInfo
    from neurcomp.quantization.bounded import encode_latent_bounded
    from neurcomp.training.latent_run import load_latent_model

    if "quant_bits" in getattr(ns, "_cli_keys", ()):
        raise ConfigError(f"{cfg.source}: quant_bits does not apply to a latent-grid network (its weight bits "
                          "are set in training)")
    model, vmin, vmax = load_latent_model(state, str(checkpoint))
    info = VolumeInfo.from_dict(state["volume"])
    mode, value = cfg.error_bound
    option = f"max_{mode}_error"
    volume = _reference_volume(cfg, info, option, "the volume the bound is kept against")
    out = check_output_file(Path(ns.output) if ns.output else
                            cfg.experiment_dir / (ns.filename or f"{cfg.expname}_bounded.nclg"),
                            "--output" if ns.output else "--filename")
    data, bound = encode_latent_bounded(model, vmin, vmax, volume.values, mode, value, option=option)
    seconds = time.perf_counter() - t0
    atomic_write_bytes(out, data, "--output" if ns.output else "--filename")
    ratio = info.num_voxels * 4 / len(data)
    print(f"wrote {out}: {human_bytes(len(data))} (latent-grid network {human_bytes(bound['network_bytes'])}, "
          f"{bound['corrections']} corrections), compression ratio {ratio:.1f}")
    print(f"error bound {bound['max_abs_error_bound']:.6g} ({mode} {value:g}): verified max abs error "
          f"{bound['max_abs_error_verified']:.6g}; time {seconds:.2f} s")
    return {"file": str(out), "file_bytes": len(data), "compression_ratio": ratio, "network": "latent",
            "seconds": seconds, "error_bound": bound}


def _reference_volume(cfg, info, option: str, why: str):
    """The volume of --data, which ``option`` measures the decoded file against (same shape as the network's)."""
    from neurcomp.quantization.cli import _read_volume

    if not cfg.data.path:
        raise ConfigError(f"{cfg.source}: {option} needs --data, {why}")
    volume = _read_volume(cfg.data.path, cfg)
    if tuple(volume.shape) != tuple(info.shape):
        raise InputError(f"{cfg.data.path}: volume shape {volume.shape} (Z, Y, X) differs from the "
                         f"checkpoint's {tuple(info.shape)}")
    return volume


def _snap(cfg, net, data: bytes, info) -> bytes | None:
    """The file flagged to round decoded voxels to integers, when that lowers the error on --data."""
    from neurcomp.quantization.decode import decode_volume
    from neurcomp.quantization.snap import snap_if_it_helps

    volume = _reference_volume(cfg, info, "snap_to_integers", "the volume to measure the error on")
    prediction = decode_volume(net, device=resolve_device(cfg.device))[0]
    flagged, snapped = snap_if_it_helps(data, prediction, volume.values, net)
    print("snap_to_integers: " + ("rounding lowers the error, flag set" if snapped else "rounding does not help, "
                                  "flag not set"))
    return flagged if snapped else None


def _bounded(cfg, net, info):
    """The file with corrections for ``max_abs_error`` / ``max_rel_error``, against --data."""
    from neurcomp.quantization.bounded import encode_bounded

    mode, value = cfg.error_bound
    option = "max_abs_error" if mode == "abs" else "max_rel_error"
    volume = _reference_volume(cfg, info, option, "the volume the bound is kept against")
    return encode_bounded(net, volume.values, mode, value, device=resolve_device(cfg.device), option=option)


def _smallest_bounded(cfg, model, info, options, seed: int, source: str):
    """The bounded file at the index bits that make it smallest (quantization.bounded.smallest_bounded)."""
    from neurcomp.quantization.bounded import smallest_bounded
    from neurcomp.quantization.encode import quantize_network

    mode, value = cfg.error_bound
    option = "max_abs_error" if mode == "abs" else "max_rel_error"
    volume = _reference_volume(cfg, info, option, "the volume the bound is kept against")
    return smallest_bounded(lambda b: quantize_network(model, info, b, options, seed=seed, source=source),
                            volume.values, mode, value, cfg.quant_bits, device=resolve_device(cfg.device),
                            option=option, progress=not cfg.quiet)


def _finetune(cfg, ns, model, net, info, finetune_codebooks) -> dict:
    """Quantization-aware fine-tuning on the volume, held as training holds it (volume_storage and
    stream_bricks decide what goes on the device)."""
    from neurcomp.training.session import load_training_volume
    from neurcomp.training.sampling import make_sampler

    volume = load_training_volume(cfg)
    if tuple(volume.shape) != tuple(info.shape):
        raise InputError(f"{cfg.data.path}: volume shape {volume.shape} (Z, Y, X) differs from the "
                         f"checkpoint's {tuple(info.shape)}; fine-tune on the volume the network was trained on")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    sampler = make_sampler(volume, device, seed=cfg.seed, scaling=cfg.scaling)
    try:
        result = finetune_codebooks(model, net, sampler, ns.finetune_passes, lr=ns.finetune_lr,
                                    points_per_step=cfg.optim.points_per_step, reference=volume)
    finally:
        if hasattr(sampler, "close"):
            sampler.close()
    result["sampler"] = {"storage": sampler.storage, "resident_bytes": sampler.resident_bytes()}
    return result


def main(argv=None):
    parser = add_quantization_arguments(build_parser("Quantize a trained Neurcomp network into a compressed file"))
    quantize_main(argv, parser)


if __name__ == "__main__":
    sys.exit(run_cli(main))
