"""``target_file_ratio``: size the network for a compressed-file ratio, and write that file after training.

Ratio = (voxels x 4 bytes) / file bytes. The network is sized from the predicted file size
(``quantization.rate_control``); after training the file is encoded, measured and, if needed,
corrected layer by layer to land within 5 % of the requested ratio; what it leaves of the target
(``outlier_share`` of it kept back when sizing) corrects the worst voxels
(``quantization.outliers``). With ``max_abs_error`` or ``max_rel_error`` the corrections that keep
the bound at every voxel are added on top instead (``quantization.bounded``), so the file is
larger than the network alone by their size; a bound without target_file_ratio writes the trained
network at the index bits of the smallest bounded file (``write_bounded_file``).
"""

from __future__ import annotations

from pathlib import Path

from neurcomp.config.errors import ConfigError
from neurcomp.config.options import NeurcompConfig
from neurcomp.data.atomic import atomic_write_bytes
from neurcomp.data.metrics import volume_metrics
from neurcomp.model.architecture import Architecture, build_architecture

TOLERANCE = 0.05


def file_target_bytes(cfg: NeurcompConfig, num_voxels: int) -> float:
    return num_voxels * 4 / cfg.target_file_ratio


def network_target_bytes(cfg: NeurcompConfig, num_voxels: int) -> float:
    """The network's share of the target: all of it less the outlier reserve (quantization.outliers;
    none with an error bound, whose corrections come on top)."""
    from neurcomp.quantization.outliers import reserve_bytes

    target = file_target_bytes(cfg, num_voxels)
    return target if cfg.error_bound else target - reserve_bytes(target, cfg.outlier_share)


def initial_architecture(cfg: NeurcompConfig, num_voxels: int) -> Architecture:
    """The network to train: sized for ``target_file_ratio`` when set, else by ``build_architecture``."""
    if cfg.target_file_ratio <= 0:
        return build_architecture(cfg.network, num_voxels, cfg.origin("compression_ratio"))
    if cfg.network.feature_list or cfg.network.features_per_layer:
        raise ConfigError(f"{cfg.source}: target_file_ratio sizes the network itself: remove feature_list "
                          f"and features_per_layer")
    from neurcomp.quantization.rate_control import measured_architecture

    net = cfg.network
    return measured_architecture(network_target_bytes(cfg, num_voxels), net.n_layers, cfg.quant_bits,
                                       net.residual, d_in=net.d_in, d_out=net.d_out, omega_0=net.omega_0,
                                       source=cfg.source, network=net.network, num_voxels=num_voxels)


def compressed_file_path(cfg: NeurcompConfig) -> Path:
    return cfg.experiment_dir / f"{cfg.expname}_{cfg.quant_bits}bit.ncq"


def write_bounded_file(cfg: NeurcompConfig, model, volume, info) -> dict:
    """A bound without target_file_ratio: the trained network at the index bits that make the
    smallest file with its corrections (``quantization.bounded.smallest_bounded``), written and measured."""
    from neurcomp.quantization.bounded import smallest_bounded
    from neurcomp.quantization.decode import decode_volume
    from neurcomp.quantization.encode import quantize_network
    from neurcomp.quantization.format import parse

    mode, value = cfg.error_bound
    device = next(model.parameters()).device
    data, bound = smallest_bounded(lambda bits: quantize_network(model, info, bits, seed=cfg.seed), volume.values,
                                   mode, value, cfg.quant_bits, device=device,
                                   option=f"{cfg.source}: max_{mode}_error", progress=False)
    path = cfg.experiment_dir / f"{cfg.expname}_{bound['bits']}bit.ncq"
    prediction = decode_volume(parse(data, str(path)), device=device)[0]
    atomic_write_bytes(path, data)
    metrics = volume_metrics(volume.values, prediction)
    ratio = volume.num_voxels * 4 / len(data)
    print(f"compressed file {path}: {len(data)} bytes, ratio {ratio:.1f}, {bound['bits']}-bit indices, "
          f"max_{mode}_error {value:g} kept ({bound['corrections']} corrections), PSNR {metrics['psnr']:.2f} dB")
    tried = {str(b): t for b, t in bound.pop("bits_tried").items()}
    return {"file": path.name, "file_bytes": len(data), "file_ratio": ratio, "file_psnr": metrics["psnr"],
            "file_max_abs_error": metrics["max_abs_error"], "file_bits_tried": tried,
            **{f"file_{k}": v for k, v in bound.items()}}


def write_compressed_file(cfg: NeurcompConfig, model, volume, info) -> dict:
    """Encode the trained network to the target size (plus the error bound's corrections), write it,
    and measure the decoded volume; with a bound and no target size, ``write_bounded_file``."""
    if cfg.target_file_ratio <= 0:
        return write_bounded_file(cfg, model, volume, info)
    from neurcomp.quantization.decode import decode_volume
    from neurcomp.quantization.format import parse
    from neurcomp.quantization.outliers import add_corrections
    from neurcomp.quantization.rate_control import encode_to_size
    from neurcomp.quantization.snap import snap_if_it_helps

    target = file_target_bytes(cfg, volume.num_voxels)
    data, report = encode_to_size(model, info, cfg.quant_bits, network_target_bytes(cfg, volume.num_voxels),
                                  tolerance=TOLERANCE, seed=cfg.seed)
    device = next(model.parameters()).device
    bound = {}
    if cfg.error_bound:
        from neurcomp.quantization.bounded import encode_bounded

        mode, value = cfg.error_bound
        data, bound = encode_bounded(parse(data), volume.values, mode, value, device=device,
                                     option=f"{cfg.source}: max_{mode}_error")
    path = compressed_file_path(cfg)
    net = parse(data, str(path))
    prediction = decode_volume(net, device=device)[0]
    data, snapped = snap_if_it_helps(data, prediction, volume.values, net)  # integer sources (quantization.snap)
    outliers = None
    if not cfg.error_bound and cfg.outlier_share > 0:  # what the network left of the target: the worst voxels
        data, outliers = add_corrections(data, volume.values, prediction, target - len(data), str(path))
    atomic_write_bytes(path, data)
    metrics = volume_metrics(volume.values, prediction)
    ratio = volume.num_voxels * 4 / len(data)
    within = abs(ratio / cfg.target_file_ratio - 1) <= TOLERANCE
    print(f"compressed file {path}: {len(data)} bytes, ratio {ratio:.1f} (target {cfg.target_file_ratio:g}), "
          f"PSNR {metrics['psnr']:.2f} dB")
    return {"file": path.name, "file_bytes": len(data), "file_ratio": ratio,
            "file_target_ratio": cfg.target_file_ratio, "file_ratio_within_5_percent": within,
            "file_psnr": metrics["psnr"], "file_snap_to_integers": snapped, "file_max_abs_error": metrics["max_abs_error"],
            "file_outlier_corrections": 0 if outliers is None else int(outliers.positions.size),
            "file_layer_bits": report["layer_bits"], **{f"file_{k}": v for k, v in bound.items()}}
