"""An error bound alone picks the smallest file (issue 24): the size walk, and each entry point
(training CLI, NeurcompQuantization.py, api.compress) keeping the bound at every voxel with a file
smaller than the default-ratio network's at the default bits plus corrections."""

import json
import math

import numpy as np
import pytest

from neurcomp.compressors import api
from neurcomp.config.cli import run_cli
from neurcomp.quantization.size_search import downhill

SHAPE = (48, 48, 48)  # the default ratio's network is wider than the bound needs at 1e-1
BOUND = 0.1
STEPS = 300


def smooth() -> np.ndarray:
    z, y, x = np.meshgrid(*(np.linspace(0, 1, n) for n in SHAPE), indexing="ij")
    return (np.sin(2 * np.pi * x) * np.cos(2 * np.pi * y) + z ** 2).astype(np.float32)


def max_error_over_bound(decoded, values) -> float:
    span = float(values.max()) - float(values.min())
    return float(np.abs(decoded.astype(np.float64) - values).max()) / (BOUND * span)


# -- the walk ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("best", [-3, -1, 0, 2, 5])
def test_downhill_finds_the_minimum_of_a_unimodal_ladder_with_few_evaluations(best):
    calls = []
    rung, seen = downhill(lambda k: calls.append(k) or (k - best) ** 2 + 1.0, -3, 5)
    assert rung == best and len(calls) == len(set(calls)) <= abs(best) + 3
    assert seen[best] == 1.0


def test_downhill_treats_an_impossible_rung_as_a_wall():
    rung, seen = downhill(lambda k: None if k >= 2 else 10.0 - k, -3, 5)
    assert rung == 1 and seen[2] is None
    with pytest.raises(ValueError, match="no rung"):
        downhill(lambda k: None, -1, 1)


def test_downhill_with_patience_walks_past_one_bump():
    """A bump as in the latent grid's sizes (Isabel at 1e-1: 4,539 / 4,706 bytes at r = 400 / 800,
    where another run had 3,026 at 1600)."""
    sizes = {-1: 12.0, 0: 10.0, 1: 8.0, 2: 9.0, 3: 5.0, 4: 7.0, 5: 6.0}
    assert downhill(sizes.get, -1, 5)[0] == 1
    rung, seen = downhill(sizes.get, -1, 5, patience=1)
    assert rung == 3 and set(seen) == {0, 1, 2, 3, 4, 5}  # the look past 3's rise (4, 5) found nothing
    assert downhill(lambda k: None if k == 2 else sizes[k], -1, 5, patience=1)[0] == 1  # a wall ends the look


# -- the entry points ----------------------------------------------------------------------------
def schedule(num_voxels: int) -> list[str]:
    passes = STEPS * 1024 * 16 / num_voxels  # the schedule api.compress(steps=STEPS) trains
    return ["--max_pass", repr(passes), "--pass_decay", repr(passes / 3), "--min_steps", str(STEPS)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A bound-only training and a default-ratio one (compression_ratio 50 given: no search)."""
    from NeurcompTraining import main

    root = tmp_path_factory.mktemp("bound_search")
    values = smooth()
    np.save(root / "v.npy", values)
    common = ["--data", str(root / "v.npy"), "--basedir", str(root), "--tracking", "none", "--checkpoint_every",
              "0", "--quiet", "true", "--max_rel_error", str(BOUND), "--network", "neurcomp", *schedule(values.size)]
    assert run_cli(main, common + ["--expname", "alone"]) == 0
    assert run_cli(main, common + ["--expname", "default", "--compression_ratio", "50"]) == 0
    return root, values


def file_of(root, expname):
    info = json.loads((root / expname / "info.json").read_text())
    return info, root / expname / info["file"]


@pytest.mark.slow
def test_training_with_a_bound_alone_searches_the_size_and_keeps_the_bound(runs):
    from NeurcompQuantization import quantize_main

    root, values = runs
    info, path = file_of(root, "alone")
    search = info["bound_search"]
    sizes = {c["compression_ratio"]: c["file_bytes"] for c in search["candidates"]}
    assert 50.0 in sizes and len(sizes) >= 2 and sizes[search["chosen_compression_ratio"]] == min(sizes.values())
    assert search["chosen_compression_ratio"] != 50.0  # a narrower network than the default wins here
    assert max_error_over_bound(api.decompress(path), values) <= 1.0
    box = (5, 30, 0, 17, 20, 48)  # x0 x1 y0 y1 z0 z1
    region = api.decompress(path, region=box)
    assert max_error_over_bound(region, values[20:48, 0:17, 5:30]) <= 1.0
    assert "compression_ratio = 100" in (root / "alone" / "config.txt").read_text()  # reproduces the winner
    # the default-ratio network at the default 9 bits plus its corrections, as before the search
    summary = quantize_main(["--config", str(root / "default" / "config.txt"), "--quant_bits", "9",
                             "--filename", "nine.ncq", "--quiet", "true"])
    assert max_error_over_bound(api.decompress(summary["file"]), values) <= 1.0
    assert path.stat().st_size < 0.85 * summary["file_bytes"]


@pytest.mark.slow
def test_quantization_without_quant_bits_picks_the_bits_of_the_smallest_bounded_file(runs):
    from NeurcompQuantization import quantize_main

    root, values = runs
    config = str(root / "default" / "config.txt")
    fixed = quantize_main(["--config", config, "--quant_bits", "9", "--filename", "fixed.ncq", "--quiet", "true"])
    chosen = quantize_main(["--config", config, "--filename", "chosen.ncq", "--quiet", "true"])
    tried = chosen["error_bound"]["bits_tried"]
    assert len(tried) >= 2 and chosen["bits"] == min(tried, key=lambda b: tried[b]["file_bytes"])
    assert chosen["file_bytes"] == tried[chosen["bits"]]["file_bytes"] <= fixed["file_bytes"]
    assert max_error_over_bound(api.decompress(chosen["file"]), values) <= 1.0


@pytest.mark.slow
def test_api_compress_with_a_bound_alone_beats_the_default_network(runs, tmp_path):
    root, values = runs
    data = api.compress(values, max_rel_error=BOUND, steps=STEPS, device="cpu", work_dir=tmp_path, network="neurcomp")
    assert max_error_over_bound(api.decompress(data), values) <= 1.0
    assert api.read_header(data)["error_bound"]["requested"] == BOUND
    _, default_file = file_of(root, "default")
    assert len(data) < default_file.stat().st_size  # that run's file already has its best bits


def test_an_explicit_ratio_keeps_its_network_and_a_resumed_run_its_chosen_size(runs):
    from neurcomp.config.options import parse_config
    from neurcomp.training import bound_search

    root, _ = runs
    info, _ = file_of(root, "default")
    assert "bound_search" not in info and info["num_parameters"] > 2000
    cfg = parse_config(["--data", str(root / "v.npy"), "--max_rel_error", str(BOUND),
                        "--resume", str(root / "alone" / "checkpoint.pt")])
    assert bound_search.applies(cfg) and math.isclose(bound_search.resumed_ratio(cfg).network.compression_ratio, 100)
    assert not bound_search.applies(parse_config(["--max_rel_error", "0.1", "--compression_ratio", "50"]))
    assert not bound_search.applies(parse_config(["--max_rel_error", "0.1", "--target_file_ratio", "100"]))


def test_a_bound_alone_trains_the_latent_grid_unless_a_network_or_a_size_is_set(runs, tmp_path):
    """config.options.LATENT_FOR_A_BOUND_ALONE: the latent grid's bounded files are the smaller
    ones measured (README); api.compress with a bound alone writes its .nclg file."""
    from neurcomp.config.options import parse_config
    from neurcomp.quantization import latent_format

    root, values = runs
    network = lambda *flags: parse_config(["--data", str(root / "v.npy"), *flags]).network.network
    assert network("--max_rel_error", "0.01") == "latent"
    assert network("--max_abs_error", "0.5") == "latent"
    assert network("--max_rel_error", "0.01", "--network", "neurcomp") == "neurcomp"
    assert network("--max_rel_error", "0.01", "--compression_ratio", "50") == "neurcomp"  # a network size
    assert network("--max_rel_error", "0.01", "--features_per_layer", "16") == "neurcomp"
    assert network("--max_rel_error", "0.01", "--resume", str(root / "alone" / "checkpoint.pt")) == "neurcomp"
    assert network("--max_rel_error", "0.01", "--target_file_ratio", "100") == "neurcomp"  # below LATENT_FROM_RATIO
    data = api.compress(values, max_rel_error=BOUND, steps=60, device="cpu", work_dir=tmp_path)
    assert data.startswith(latent_format.MAGIC)
    assert max_error_over_bound(api.decompress(data), values) <= 1.0
    assert api.read_header(data)["error_bound"]["requested"] == BOUND
