"""Damaged and hand-made checkpoints against the scripts that read them (NeurcompVisualization.py,
NeurcompQuantization.py, and NeurcompTraining.py's --resume / --checkpoint_path): each either works
or stops with one line, a non-zero exit and no traceback, and writes nothing."""

import shutil

import numpy as np
import pytest
import torch

from neurcomp.config.cli import run_cli
from neurcomp.config.options import parse_config
from neurcomp.training.run import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile_ckpt")
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, 8)] * 3, indexing="ij")
    np.save(tmp / "vol.npy", (np.sin(2 * x) * y + z).astype(np.float32))
    config = tmp / "c.txt"
    config.write_text(f"data = {tmp / 'vol.npy'}\nbasedir = {tmp / 'exp'}\nexpname = run\nn_layers = 2\n"
                      "features_per_layer = 8\nmax_pass = 2\nbatch_size = 64\nsample_size = 8\nlr = 1e-3\n"
                      "tracking = none\nquiet = true\n")
    train(parse_config(["--config", str(config)]), progress=False)
    return tmp, config, (tmp / "exp" / "run" / "checkpoint.pt").read_bytes()


def damaged(good: bytes, rng) -> list[tuple[str, bytes]]:
    n = len(good)
    cases = [(f"cut at {k}", good[:k]) for k in sorted({0, 1, 8, 64, n // 3, n // 2, n - 100, n - 1})]
    for k in rng.choice(n, size=24, replace=False):
        flipped = bytearray(good)
        flipped[k] ^= 0xFF
        cases.append((f"flip at {k}", bytes(flipped)))
    return cases


def crafted(good_path) -> list[tuple[str, dict]]:
    state = torch.load(good_path, weights_only=True)
    wider = {**state, "architecture": {**state["architecture"], "widths": [9, 9]}}
    nan = {**state, "model_state": {k: torch.full_like(v, float("nan")) for k, v in state["model_state"].items()}}
    no_volume = {k: v for k, v in state.items() if k != "volume"}
    return [("architecture not matching the weights", wider), ("NaN weights", nan), ("no volume record", no_volume)]


def scripts(tmp, config, ckpt):
    from NeurcompQuantization import quantize_main
    from NeurcompVisualization import main as visualize

    out = tmp / "out"
    return [("visualization", visualize, ["--config", str(config), "--checkpoint_path", str(ckpt),
                                          "--output_dir", str(out)]),
            ("quantization", quantize_main, ["--config", str(config), "--output", str(out / "f.ncq")])]


def check_one_line(tmp, capsys, name, main, argv, case):
    out = tmp / "out"
    shutil.rmtree(out, ignore_errors=True)  # an earlier case that worked wrote there
    code = run_cli(main, argv)
    err = capsys.readouterr().err.strip()
    if code == 0:  # a flip in a float that still loads: the script works, outputs are finite
        return
    assert "Traceback" not in err and "\n" not in err and err.startswith("error: "), (name, case, err)
    assert not out.exists() or not any(out.iterdir()), (name, case)


def test_damaged_checkpoints_are_refused_in_one_line(trained, capsys):
    tmp, config, good = trained
    ckpt = tmp / "exp" / "run" / "checkpoint.pt"
    rng = np.random.default_rng(0)
    try:
        for case, data in damaged(good, rng):
            ckpt.write_bytes(data)
            for name, main, argv in scripts(tmp, config, ckpt):
                check_one_line(tmp, capsys, name, main, argv, case)
    finally:
        ckpt.write_bytes(good)


def test_hand_made_checkpoints_are_refused_in_one_line(trained, capsys):
    tmp, config, good = trained
    ckpt = tmp / "exp" / "run" / "checkpoint.pt"
    try:
        for case, state in crafted(ckpt):
            torch.save(state, ckpt)
            for name, main, argv in scripts(tmp, config, ckpt):
                shutil.rmtree(tmp / "out", ignore_errors=True)
                assert run_cli(main, argv) == 2, (name, case)
                err = capsys.readouterr().err.strip()
                assert err.startswith(f"error: {ckpt}: ") and "\n" not in err, (name, case, err)
                assert not (tmp / "out").exists() or not any((tmp / "out").iterdir())
            # training refuses it too, as a run to resume and as a warm start
            from NeurcompTraining import main as training

            for option in ("--resume", "--checkpoint_path"):
                code = run_cli(training, ["--config", str(config), "--expname", "again", option, str(ckpt)])
                err = capsys.readouterr().err.strip()
                assert code == 2 and err.startswith("error: ") and "\n" not in err, (option, case, err)
    finally:
        ckpt.write_bytes(good)
