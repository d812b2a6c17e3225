"""Pruning methods (binary, Smallify, variational static/dynamic): gates, shrinking, schedule, CLI."""

import json
import math

import numpy as np
import pytest
import torch

from neurcomp.config.errors import ConfigError
from neurcomp.config.options import OptimConfig, PruningConfig, parse_config
from neurcomp.model import Architecture, Neurcomp, count_parameters
from neurcomp.model.pruning import PRUNING_METHODS, PrunableNeurcomp, build_pruning
from neurcomp.model.pruning.variational import VariationalDynamic, VariationalStatic, drop_entropy, kl_approx
from tests.conftest import run_script
from neurcomp.training.checkpoint import load_model, read_checkpoint
from neurcomp.model.inference import predict_volume
from neurcomp.training.phases import PruningTrainer, passes_split
from neurcomp.training.sampling import VolumeSampler
from neurcomp.training.trainer import Phase


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks: one thread avoids oversubscribing the shared CPU cores (much faster here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

METHODS = ["binary", "smallify", "variational_static", "variational_dynamic"]

# (aggressive, zero-penalty) settings per method
SETTINGS = {
    "binary": (dict(lambda_betas=1e-2, threshold=0.5), dict(lambda_betas=0.0, threshold=0.5)),
    "smallify": (dict(lambda_betas=1e-1, momentum=0.2, threshold=0.3),
                 dict(lambda_betas=0.0, momentum=0.2, threshold=0.3)),
    "variational_static": (
        dict(variational_sigma=-1, variational_lambda_dkl=100, variational_init_droprate=0.3, threshold=0.5),
        dict(variational_sigma=-1, variational_lambda_dkl=0, variational_lambda_weight=0,
             variational_init_droprate=0.3, threshold=0.5)),
}
SETTINGS["variational_dynamic"] = SETTINGS["variational_static"]


def smooth_volume(n=16) -> np.ndarray:
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n),) * 3, indexing="ij")
    v = np.sin(2 * x) * np.cos(3 * y) + 0.5 * z ** 2
    return (2 * (v - v.min()) / (v.max() - v.min()) - 1).astype(np.float32)


def train_gated(technique, residual=True, steps=60, width=16, n_layers=3, stream=False, **cfg):
    torch.manual_seed(0)
    vol = smooth_volume()
    method = build_pruning(technique, PruningConfig(technique=technique, **cfg), dataset_size=vol.size)
    gated = PrunableNeurcomp(Architecture.uniform(width, n_layers, residual=residual), method,
                             prune_residual_width=stream)
    optim = OptimConfig(lr=1e-3, batch_size=64, sample_size=16)
    phase = Phase("prune", steps, optim.lr, vol.size / optim.points_per_step, optim, regularizer=gated.regularizer)
    PruningTrainer(gated, VolumeSampler(vol, "cpu"), phase, progress=False).run()
    return gated


def assert_same_function(gated, pruned, atol=1e-5):
    gated.eval()
    pruned.eval()
    x = torch.rand(4000, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        a, b = gated(x), pruned(x)
    assert torch.allclose(a, b, atol=atol, rtol=0), float((a - b).abs().max())


def test_registry():
    assert set(METHODS) | {"variational"} <= set(PRUNING_METHODS)
    assert PRUNING_METHODS["variational"] is VariationalStatic
    assert isinstance(build_pruning("variational_dynamic", PruningConfig()), VariationalDynamic)
    with pytest.raises(ConfigError, match="not a pruning method"):
        build_pruning("magnitude", PruningConfig())


@pytest.mark.parametrize("residual", [True, False], ids=["residual", "plain"])
@pytest.mark.parametrize("technique", METHODS)
def test_aggressive_prunes_zero_penalty_keeps_all(technique, residual):
    aggressive, zero = SETTINGS[technique]
    gated = train_gated(technique, residual, **aggressive)
    pruned, report = gated.prune()
    assert report.num_parameters_after < report.num_parameters_before
    assert sum(layer.after for layer in report.layers) < sum(layer.before for layer in report.layers)
    assert pruned.arch.residual == residual and count_parameters(pruned.arch) == report.num_parameters_after
    assert_same_function(gated, pruned)  # masked (eval) network == pruned network before fine-tuning

    gated = train_gated(technique, residual, **zero)
    pruned, report = gated.prune()
    assert report.num_parameters_after == report.num_parameters_before, report.summary()
    assert_same_function(gated, pruned)


def random_gates(gated, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in gated.all_gates():
            for p in gate.parameters():
                p.copy_(torch.randn(p.shape, generator=g) / (1 if p is getattr(gate, "theta_raw", None)
                                                             else gate.param_scale))
            if hasattr(gate, "alive"):
                gate.alive.copy_(torch.rand(gate.n, generator=g) > 0.4)


@pytest.mark.parametrize("residual,stream", [(True, False), (True, True), (False, False)],
                         ids=["residual", "residual+shared_width", "plain"])
@pytest.mark.parametrize("technique", METHODS)
def test_folding_exact_with_random_gates(technique, residual, stream):
    torch.manual_seed(0)
    method = build_pruning(technique, PruningConfig(technique=technique, threshold=0.5))
    gated = PrunableNeurcomp(Architecture([12, 10, 9, 8], residual=residual), method, prune_residual_width=stream)
    random_gates(gated)
    gated.eval()
    pruned, report = gated.prune()
    assert report.num_parameters_after < report.num_parameters_before
    assert pruned.arch.widths != gated.arch.widths
    assert_same_function(gated, pruned)
    if stream:
        assert report.layers[-1].name == "residual_width" and pruned.arch.widths[0] == report.layers[-1].after


def test_quantization_round_trip_of_a_pruned_network():
    encode = pytest.importorskip("neurcomp.quantization.encode")
    decode = pytest.importorskip("neurcomp.quantization.decode")
    from neurcomp.data.volume import VolumeInfo

    method = build_pruning("smallify", PruningConfig(technique="smallify"))
    gated = PrunableNeurcomp(Architecture([12, 10, 9, 8]), method)
    random_gates(gated)
    pruned, _ = gated.prune()
    vinfo = VolumeInfo(shape=(8, 8, 8), spacing=(1.0, 1.0, 1.0), vmin=0.0, vmax=1.0)
    model, _, _ = decode.decode_bytes(encode.encode_model(pruned, vinfo, bits=16))
    assert model.arch == pruned.arch and len(set(model.arch.widths)) > 1
    x = torch.rand(500, 3) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(model(x), pruned.eval()(x), atol=1e-2)


def test_residual_network_without_blocks_is_refused():
    with pytest.raises(ValueError, match="no layer to prune"):
        PrunableNeurcomp(Architecture([12]), build_pruning("binary", PruningConfig()))


def test_eval_is_deterministic_train_is_noisy():
    method = build_pruning("variational_static", PruningConfig(variational_init_droprate=0.3))
    gated = PrunableNeurcomp(Architecture.uniform(8, 3), method)
    x = torch.rand(100, 3)
    gated.train()
    assert not torch.equal(gated(x), gated(x))
    gated.eval()
    assert torch.equal(gated(x), gated(x))


@pytest.mark.parametrize("technique", METHODS)
def test_fully_pruned_layer_keeps_strongest(technique):
    method = build_pruning(technique, PruningConfig(technique=technique, threshold=0.5))
    gated = PrunableNeurcomp(Architecture.uniform(6, 3), method)
    gate = gated.gates[0]
    with torch.no_grad():
        if technique == "binary":
            gate.score_raw.copy_(torch.linspace(-5, -1, 6) / gate.param_scale)  # all below 0.5, #5 largest
        elif technique == "smallify":
            gate.alive.zero_()
            gate.beta_raw.copy_(torch.linspace(0.1, 0.6, 6) / gate.param_scale)
        else:
            gate.theta_raw.copy_(torch.linspace(0.01, 0.06, 6))  # p ~ 1 for all, #5 smallest alpha
    pruned, report = gated.prune()
    assert report.layers[0].after == 1 and report.layers[0].forced_keep
    assert "kept the strongest one" in report.messages[0]
    assert pruned.arch.widths[1] == 1
    assert bool(gate.keep_mask()[5])
    assert_same_function(gated, pruned)


def test_binary_forward_and_pruning_use_the_same_test():
    method = build_pruning("binary", PruningConfig(technique="binary", threshold=0.7))
    gated = PrunableNeurcomp(Architecture.uniform(4, 2, residual=False), method)
    gate = gated.gates[0]
    with torch.no_grad():
        gate.score_raw.copy_(torch.tensor([0.5, 0.9, 1.0, 3.0]) / gate.param_scale)  # sigmoid: .62 .71 .73 .95
    gate.train()
    factor = gate.factor(torch.ones(1, 4))
    assert factor.tolist() == [0.0, 1.0, 1.0, 1.0]  # hard mask in the forward pass
    factor.sum().backward()
    assert gate.score_raw.grad.abs().min() > 0  # straight-through gradient reaches every score
    assert gate.keep_mask().tolist() == [False, True, True, True]


def test_smallify_sign_variance_prunes_flipping_switches():
    method = build_pruning("smallify", PruningConfig(technique="smallify", momentum=0.1, threshold=0.5))
    gated = PrunableNeurcomp(Architecture.uniform(3, 2, residual=False), method)
    gate = gated.gates[0]
    for step in range(100):
        with torch.no_grad():
            gate.beta_raw.copy_(torch.tensor([1.0, (-1.0) ** step, 0.5]) / gate.param_scale)
        gate.after_step(step)
    assert gate.keep_mask().tolist() == [True, False, True]
    assert 0.5 < float(gate.sign_var[1]) <= 1.0 and float(gate.sign_var[0]) == 0.0


@pytest.mark.parametrize("technique", ["variational_static", "variational_dynamic"])
def test_variational_loss_finite_when_p_reaches_0_and_1(technique):
    method = build_pruning(technique, PruningConfig(technique=technique, variational_lambda_entropy=1.0),
                           dataset_size=1000)
    gated = PrunableNeurcomp(Architecture.uniform(4, 3), method)
    with torch.no_grad():
        gated.gates[0].theta_raw.copy_(torch.tensor([0.0, 0.0, 1e-30, 1.0]))  # p = 1
        gated.gates[0].log_sigma2_raw.copy_(torch.tensor([0.0, 50.0, -50.0, -1e4]))
        gated.gates[1].log_sigma2_raw.fill_(-1e4 / gated.gates[1].param_scale)  # p = 0
    p = torch.cat([g.drop_rate() for g in gated.gates]).detach()
    assert float(p.max()) > 0.9999 and float(p.min()) < 1e-4
    coords = torch.rand(64, 3) * 2 - 1
    gated.train()
    pred = gated(coords)
    loss, metrics = gated.regularizer.loss(gated, step=10 ** 9)  # KL weight growth is capped
    data = gated.regularizer.data_loss(gated, coords, pred, torch.zeros_like(pred))
    total = loss + data
    assert math.isfinite(float(total.detach())) and all(math.isfinite(float(v)) for v in metrics.values())
    total.backward()
    for name, param in gated.named_parameters():
        assert torch.isfinite(param.grad).all(), name
    la = torch.tensor([-1e9, -10.0, 0.0, 10.0, 1e9])
    assert torch.isfinite(drop_entropy(la.clamp(-10, 10))).all() and torch.isfinite(kl_approx(la)).all()
    # the entropy term pushes p toward 0 or 1, not toward 0.5
    assert float(drop_entropy(torch.tensor(0.0))) > float(drop_entropy(torch.tensor(3.0)))


def test_trainer_logs_live_neurons_histograms_and_kl_weight():
    class Recorder:
        def __init__(self):
            self.metrics, self.histograms = [], []

        def log_metrics(self, metrics, step):
            self.metrics.append(metrics)

        def log_histogram(self, name, values, step):
            self.histograms.append(name)

    vol = smooth_volume(8)
    method = build_pruning("variational_static", PruningConfig(technique="variational_static"), dataset_size=vol.size)
    gated = PrunableNeurcomp(Architecture.uniform(6, 3), method)
    optim = OptimConfig(lr=1e-3, batch_size=32, sample_size=16)
    rec = Recorder()
    phase = Phase("prune", 3, optim.lr, 1.0, optim, regularizer=gated.regularizer)
    PruningTrainer(gated, VolumeSampler(vol, "cpu"), phase, tracker=rec, progress=False).run()
    assert len(rec.metrics) == 3
    m = rec.metrics[-1]
    for key in ("kl", "kl_weight", "nll", "pruning_loss", "live_neurons", "live_neurons/block1_inner",
                "live_neurons/block2_inner"):
        assert f"train/{key}" in m, key
    assert m["train/live_neurons"] == 12
    assert "pruning/log_alpha/block1_inner" in rec.histograms


# --- the pipeline: schedule, checkpoints, resume, CLI ---------------------------------------------

def pruning_config(tmp_path, volume, expname="p", **extra) -> list[str]:
    opts = {"data": volume, "basedir": tmp_path / "exp", "expname": expname, "features_per_layer": 12,
            "n_layers": 3, "max_pass": 6, "batch_size": 16, "sample_size": 16, "lr": 2e-3, "pass_decay": 2,
            "lr_decay": 0.5, "checkpoint_every": 1, "tracking": "none", "dropout_technique": "smallify",
            "lambda_betas": 1e-1, "pruning_momentum": 0.2, "pruning_threshold": 0.3, "prune_fraction": 0.5, **extra}
    path = tmp_path / f"{expname}.txt"
    path.write_text("".join(f"{k} = {v}\n" for k, v in opts.items()))
    return ["--config", str(path)]


INFO_KEYS = ("num_parameters_before_pruning", "network_layer_sizes_before_pruning", "kept_fraction_per_layer",
             "psnr_before_pruning", "psnr_after_pruning", "psnr", "num_parameters", "network_layer_sizes",
             "compression_ratio", "pruning_technique", "pruning_layers")


@pytest.mark.slow
def test_cli_end_to_end_save_load_visualize(tmp_path, tiny_volume):
    args = pruning_config(tmp_path, tiny_volume)
    proc = run_script("NeurcompTraining.py", *args, env_extra=ONE_THREAD_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "exp" / "p"
    info = json.loads((out / "info.json").read_text())
    for key in INFO_KEYS:
        assert key in info, key
    assert info["network_layer_sizes_before_pruning"] == [3, 12, 12, 12, 1]
    assert info["num_parameters"] < info["num_parameters_before_pruning"]
    assert info["network_layer_sizes"][1] == 12 and info["network_layer_sizes"][2:4] != [12, 12]
    assert set(info["kept_fraction_per_layer"]) == {"block1_inner", "block2_inner"}
    assert abs(info["psnr_after_pruning"] - info["psnr_before_pruning"]) < 1e-3  # same function
    assert info["compression_ratio"] == pytest.approx(info["volume_num_voxels"] / info["num_parameters"])

    model, vinfo, state = load_model(out / "checkpoint.pt")  # uneven widths rebuild from the checkpoint
    assert state["trainer"]["phase"] == "finetune"
    assert model.arch.layer_sizes() == info["network_layer_sizes"]
    gt = np.load(tiny_volume)
    pred = predict_volume(model, gt.shape, vinfo)
    psnr = 20 * np.log10(gt.max() - gt.min()) - 10 * np.log10(np.mean((pred.astype(np.float64) - gt) ** 2))
    assert psnr == pytest.approx(info["psnr"], abs=1e-3)

    vis = run_script("NeurcompVisualization.py", "--config", out / "config.txt", "--output_dir", tmp_path / "vis",
                     env_extra=ONE_THREAD_ENV)
    assert vis.returncode == 0, vis.stderr[-3000:]
    assert (tmp_path / "vis" / "prediction.vti").is_file()
    assert f"PSNR {info['psnr']:.2f} dB" in vis.stdout


@pytest.mark.parametrize("technique", ["smallify", "variational_dynamic"])
@pytest.mark.parametrize("phase", ["prune", "finetune"])
def test_resume_after_interrupt_matches_uninterrupted(tmp_path, tiny_volume, monkeypatch, technique, phase):
    """Ctrl-C at a random step of the phase: the resumed run is the same run, bit for bit."""
    import random

    from tests.test_training import interrupt_after
    from neurcomp.training import run as run_module
    from neurcomp.training.trainer import Interrupted

    extra = dict(dropout_technique=technique, variational_sigma=-1, variational_lambda_dkl=100,
                 variational_init_droprate=0.3)
    full = run_module.train(parse_config(pruning_config(tmp_path, tiny_volume, "full", **extra)), progress=False)

    args = pruning_config(tmp_path, tiny_volume, "cut", **extra)
    prune_steps, finetune_steps = passes_split(parse_config(args), int(np.load(tiny_volume).size))
    assert prune_steps >= 4 and finetune_steps >= 4
    first, last = (1, prune_steps - 1) if phase == "prune" else (prune_steps + 1, prune_steps + finetune_steps - 1)
    stop_at = random.Random(f"{technique}{phase}").randint(first, last)
    interrupt_after(monkeypatch, stop_at)
    with pytest.raises(Interrupted):
        run_module.train(parse_config(args), progress=False)
    monkeypatch.undo()
    ckpt = tmp_path / "exp" / "cut" / "checkpoint.pt"
    state = read_checkpoint(ckpt)
    assert state["trainer"]["phase"] == phase and state["tag"] == "interrupt"
    assert state["trainer"]["step"] == stop_at - (0 if phase == "prune" else prune_steps)
    load_model(ckpt)  # a mid-phase checkpoint loads as a plain network too
    torch.load(ckpt, weights_only=True)  # plain values only

    resumed = run_module.train(parse_config(args + ["--resume", str(ckpt)]), progress=False)
    assert resumed["network_layer_sizes"] == full["network_layer_sizes"]
    assert resumed["steps"] == full["steps"]
    a, b = load_model(tmp_path / "exp" / "full" / "checkpoint.pt")[0].state_dict(), load_model(ckpt)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["psnr"] == full["psnr"]
    assert resumed["psnr_before_pruning"] == full["psnr_before_pruning"]


def test_resume_rejects_a_checkpoint_without_pruning(tmp_path, tiny_volume):
    from neurcomp.data.volume import VolumeInfo
    from neurcomp.training.checkpoint import save_checkpoint
    from neurcomp.training.run import train

    ckpt = tmp_path / "plain.pt"
    save_checkpoint(ckpt, Neurcomp(Architecture.uniform(12, 3)),
                    VolumeInfo(shape=(12, 14, 16), spacing=(1, 1, 1), vmin=0, vmax=1),
                    trainer={"phase": "train"})
    with pytest.raises(ConfigError, match="not a checkpoint of a training with pruning"):
        train(parse_config(pruning_config(tmp_path, tiny_volume) + ["--resume", str(ckpt)]))


def test_resume_refuses_another_technique_in_one_line(tmp_path, tiny_volume):
    """Another dropout_technique's gates do not fit the checkpoint's state: a one-line refusal
    naming the checkpoint, never load_state_dict's RuntimeError."""
    args = pruning_config(tmp_path, tiny_volume, max_pass=2)
    run_script("NeurcompTraining.py", *args, "--max_pass", "2", env_extra=ONE_THREAD_ENV)
    ckpt = tmp_path / "exp" / "p" / "checkpoint.pt"
    proc = run_script("NeurcompTraining.py", *args, "--dropout_technique", "variational_dynamic", "--resume", ckpt,
                      env_extra=ONE_THREAD_ENV)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {ckpt}: cannot resume from this checkpoint: dropout_technique "
                                                "smallify (config: variational_dynamic)"]


@pytest.mark.parametrize("technique", ["smallify", "variational_dynamic"])
def test_pruning_with_the_gradient_loss(tmp_path, tiny_volume, technique):
    """grad_lambda > 0 on a gated network: autograd's double backward through the gates."""
    from neurcomp.training.run import train

    extra = dict(dropout_technique=technique, variational_sigma=-1, variational_init_droprate=0.3)
    info = train(parse_config(pruning_config(tmp_path, tiny_volume, max_pass=2, grad_lambda=0.1, **extra)),
                 progress=False)
    assert math.isfinite(info["psnr"]) and info["num_parameters"] <= info["num_parameters_before_pruning"]
    history = read_checkpoint(tmp_path / "exp" / "p" / "checkpoint.pt")["trainer"]["history"]
    assert all(h["grad_loss"] > 0 and math.isfinite(h["loss"]) for h in history)
    # the gradient term reaches the gated network's parameters
    gated = PrunableNeurcomp(Architecture.uniform(8, 3), build_pruning(technique, PruningConfig(technique=technique)))
    vol = smooth_volume()
    grads = {}
    for grad_lambda in (0.0, 0.1):
        torch.manual_seed(0)
        trainer = PruningTrainer(gated, VolumeSampler(vol, "cpu", seed=0, with_gradients=True),
                                 Phase("prune", 1, 1e-3, 1.0, OptimConfig(batch_size=16, sample_size=16,
                                                                          grad_lambda=grad_lambda),
                                       regularizer=gated.regularizer), progress=False)
        coords, targets, target_grads = trainer.sampler.sample(256)
        gated.zero_grad()
        trainer.accumulate_gradients(coords, targets, target_grads, 1.0)
        grads[grad_lambda] = torch.cat([p.grad.flatten() for p in gated.net.parameters()])
    assert (grads[0.1] - grads[0.0]).abs().max() > 1e-4 * grads[0.0].abs().max()
