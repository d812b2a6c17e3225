"""sbp_log_normal (structured Bayesian pruning, Neklyudov et al. 2017): gate, KL, SNR, shrinking,
options and the original's config, resume."""

import json
import math

import numpy as np
import pytest
import torch

from neurcomp.config.errors import ConfigError
from neurcomp.config.options import OptimConfig, PruningConfig, format_config_file, parse_config
from neurcomp.model import Architecture
from neurcomp.model.pruning import PRUNING_METHODS, PrunableNeurcomp, build_pruning
from neurcomp.model.pruning.sbp import SBPLogNormal, SBPOptions, sample_truncated_normal, sbp_kl, sbp_moments
from tests.test_config import original_config
from tests.test_pruning import assert_same_function, pruning_config, smooth_volume
from neurcomp.training.checkpoint import load_model, read_checkpoint
from neurcomp.training.phases import PruningTrainer, passes_split
from neurcomp.training.sampling import VolumeSampler
from neurcomp.training.trainer import Phase

A, B = -20.0, 0.0
F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gated_net(widths=(12, 10, 9, 8), residual=True, stream=False, **cfg):
    method = build_pruning("sbp_log_normal", PruningConfig(technique="sbp_log_normal", **cfg), dataset_size=1000)
    return PrunableNeurcomp(Architecture(list(widths), residual=residual), method, prune_residual_width=stream)


def set_gate(gate, mu, log_sigma):
    with torch.no_grad():
        gate.mu_raw.copy_(torch.as_tensor(mu, dtype=torch.float32) / gate.param_scale)
        gate.log_sigma_raw.copy_(torch.as_tensor(log_sigma, dtype=torch.float32) / gate.param_scale)


def random_gates(gated, seed=0):
    g = torch.Generator().manual_seed(seed)
    for gate in gated.all_gates():  # log sigma in [-4, 2]: SNR from ~0.4 to ~50, both sides of 4
        set_gate(gate, -3 * torch.rand(gate.n, generator=g), torch.rand(gate.n, generator=g) * 6 - 4)


# --- the gate's mathematics -------------------------------------------------------------------------

MUS = torch.tensor([0.0, -3.0, -19.0, 2.0, -10.0, 1.0], dtype=F64)
LOG_SIGMAS = torch.tensor([-5.0, 0.0, 0.5, -1.0, 1.5, -2.0], dtype=F64)


def test_registered_with_its_options():
    assert PRUNING_METHODS["sbp_log_normal"] is SBPLogNormal
    o = build_pruning("sbp_log_normal", PruningConfig(technique="sbp_log_normal")).opts
    assert (o.threshold, o.log_min, o.log_max, o.lambda_dkl, o.lambda_weight, o.sigma) == (4.0, A, B, 1e-5, 1e-5, 0.0)


def test_kl_is_the_truncated_normals_negative_entropy_plus_log_width():
    kl = sbp_kl(MUS, LOG_SIGMAS, A, B)
    assert kl.shape == MUS.shape and torch.isfinite(kl).all() and (kl > 0).all()
    # numerical integration of q log q over [a, b] (float64, fine grid)
    phi = torch.linspace(A, B, 400001, dtype=F64)[:, None]
    s = LOG_SIGMAS.exp()
    dens = torch.exp(-0.5 * ((phi - MUS) / s) ** 2) / (s * math.sqrt(2 * math.pi))
    q = dens / torch.trapezoid(dens, phi, dim=0)
    neg_entropy = torch.trapezoid(torch.where(q > 0, q * torch.log(q), torch.zeros_like(q)), phi, dim=0)
    torch.testing.assert_close(kl, neg_entropy + math.log(B - A), atol=1e-4, rtol=1e-5)
    # the prior itself (sigma -> infinity) costs nothing; a sharp q costs about -log sigma
    assert float(sbp_kl(torch.tensor([-10.0], dtype=F64), torch.tensor([8.0], dtype=F64), A, B)) < 1e-6
    assert torch.autograd.gradcheck(lambda m, ls: sbp_kl(m, ls, A, B), (MUS.clone().requires_grad_(),
                                                                         LOG_SIGMAS.clone().requires_grad_()))


def test_kl_finite_far_outside_the_interval():
    """mu beyond b with a tiny sigma (a point mass at b): Z underflows, the KL and its gradients do not."""
    mu = torch.tensor([5.0, -20.0, -25.0, 4.99, -10.0], dtype=F64, requires_grad=True)
    ls = torch.tensor([-10.0, -10.0, -3.0, -10.0, -10.0], dtype=F64, requires_grad=True)
    kl = sbp_kl(mu, ls, A, B)
    assert torch.isfinite(kl).all() and (kl > 0).all()
    # point mass at b: phi - b ~ -Exponential(rate (mu - b) / sigma^2): KL = log 20 - 1 + log(5 / sigma^2)
    assert float(kl[0].detach()) == pytest.approx(math.log(20) - 1 + math.log(5) + 20, abs=1e-3)
    kl.sum().backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(ls.grad).all()


def test_moments_and_samples_agree_with_monte_carlo():
    log_mean, log_snr = sbp_moments(MUS, LOG_SIGMAS, A, B)
    u = torch.rand(400000, len(MUS), dtype=F64, generator=torch.Generator().manual_seed(0))
    phi = sample_truncated_normal(MUS, LOG_SIGMAS.exp(), A, B, u)
    assert (phi >= A).all() and (phi <= B).all()
    theta = phi.exp()
    torch.testing.assert_close(log_mean.exp(), theta.mean(0), rtol=2e-2, atol=1e-9)  # 5 standard errors
    torch.testing.assert_close(log_snr.exp(), theta.mean(0) / theta.std(0), rtol=5e-2, atol=0)


def test_gate_forward_train_is_noisy_eval_is_the_expectation():
    gated = gated_net()
    gate = gated.gates[0]
    set_gate(gate, torch.linspace(-3, 0, 10), torch.linspace(-4, 1, 10))
    x = torch.ones(20000, 10)
    gate.train()
    gen = torch.Generator().manual_seed(0)
    y1, y2 = gate(x, gen), gate(x, gen)
    assert not torch.equal(y1, y2) and y1.dtype == x.dtype
    assert (y1 > 0).all() and (y1 <= math.exp(B)).all()
    keep = gate.keep_mask()
    assert 0 < int(keep.sum()) < 10  # this setting is on both sides of the threshold
    torch.testing.assert_close(y1.mean(0), gate.scale(), rtol=0.05, atol=0)  # unbiased: E[theta]
    gate.eval()
    e = gate(x[:3])
    assert torch.equal(e, gate(x[:3]))
    assert torch.equal(e[0], gate.scale() * keep.float())
    assert keep.tolist() == (gate.snr() > 4.0).tolist()


def test_pruning_removes_exactly_the_low_snr_neurons_and_computes_the_same():
    gated = gated_net(residual=False, widths=(6, 6, 6))
    snrs = []
    for gate in gated.gates:  # log sigma -5 (SNR 148), 0 (SNR ~1.1): neurons 1 and 4 go in every layer
        set_gate(gate, torch.zeros(6), torch.tensor([-5.0, 0.0, -5.0, -3.0, 0.0, -2.0]))
        snrs.append(gate.snr())
    assert all(s.tolist() == snrs[0].tolist() for s in snrs)
    assert [bool(v > 4.0) for v in snrs[0]] == [True, False, True, True, False, True]
    pruned, report = gated.prune()
    assert pruned.arch.widths == [4, 4, 4] and [layer.after for layer in report.layers] == [4, 4, 4]
    # the kept columns are the kept neurons, scaled by E[theta]
    keep = torch.tensor([0, 2, 3, 5])
    e = gated.gates[-1].scale()[keep]
    torch.testing.assert_close(pruned.output.weight, gated.net.output.weight[:, keep] * e[None, :])
    assert_same_function(gated, pruned)


@pytest.mark.parametrize("residual,stream", [(True, False), (True, True), (False, False)],
                         ids=["residual", "residual+shared_width", "plain"])
def test_folding_exact_with_random_gates(residual, stream):
    torch.manual_seed(0)
    gated = gated_net(residual=residual, stream=stream)
    random_gates(gated)
    gated.eval()
    pruned, report = gated.prune()
    assert report.num_parameters_after < report.num_parameters_before
    kept = [int((g.snr() > 4.0).sum()) for g in gated.all_gates()]
    assert [layer.after for layer in report.layers] == kept
    assert_same_function(gated, pruned)


def test_fully_pruned_layer_keeps_the_highest_snr():
    gated = gated_net(widths=(6, 6, 6))
    set_gate(gated.gates[0], torch.full((6,), -5.0), torch.tensor([2.0, 1.5, 1.0, 0.9, 0.2, 0.6]))
    snr = gated.gates[0].snr()
    assert float(snr.detach().max()) < 4.0 and int(snr.argmax()) == 4  # every neuron fails; #4 is the strongest
    pruned, report = gated.prune()
    assert report.layers[0].after == 1 and report.layers[0].forced_keep
    assert bool(gated.gates[0].keep_mask()[4]) and pruned.arch.widths[1] == 1
    assert_same_function(gated, pruned)


def test_loss_finite_with_gradients_and_projection():
    gated = gated_net(sbp_lambda_dkl=10.0)
    set_gate(gated.gates[0], torch.tensor([50.0] * 5 + [-50.0] * 5), torch.tensor([-30.0] * 5 + [30.0] * 5))
    coords = torch.rand(64, 3) * 2 - 1
    gated.train()
    pred = gated(coords)
    loss, metrics = gated.regularizer.loss(gated, step=0)
    total = loss + gated.regularizer.data_loss(gated, coords, pred, torch.zeros_like(pred))
    assert math.isfinite(float(total.detach())) and all(math.isfinite(float(v)) for v in metrics.values())
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in gated.parameters() if p.grad is not None)
    gated.regularizer.after_step(gated, 0)  # out-of-range parameters are projected back
    mu, log_sigma = gated.gates[0].params64()
    torch.testing.assert_close(mu, gated.gates[0].mu_raw.to(F64) * gated.gates[0].param_scale)
    assert float(mu.detach().max()) == pytest.approx(B + 5) and float(log_sigma.detach().max()) == pytest.approx(5.0)


def train_gated(steps, **cfg):
    torch.manual_seed(0)
    vol = smooth_volume()
    method = build_pruning("sbp_log_normal", PruningConfig(technique="sbp_log_normal", **cfg), dataset_size=vol.size)
    gated = PrunableNeurcomp(Architecture.uniform(16, 3), method)
    optim = OptimConfig(lr=1e-3, batch_size=64, sample_size=16, pass_decay=1000)
    phase = Phase("prune", steps, optim.lr, vol.size / optim.points_per_step, optim, regularizer=gated.regularizer)
    PruningTrainer(gated, VolumeSampler(vol, "cpu"), phase, progress=False).run()
    return gated


def test_kl_weight_prunes_zero_weight_keeps_all():
    strong = train_gated(200, sbp_sigma=-1, sbp_lambda_dkl=1e5)
    off = train_gated(200, sbp_sigma=-1, sbp_lambda_dkl=0, sbp_lambda_weight=0)
    assert sum(off.live_neurons().values()) == 32
    assert sum(strong.live_neurons().values()) < 32
    for gated in (strong, off):
        pruned, _ = gated.prune()
        assert_same_function(gated, pruned)


# --- options and configs ----------------------------------------------------------------------------

def test_original_names_set_its_options_and_config_txt_reads_back(tmp_path):
    cfg = parse_config(["--dropout_technique", "sbp_log_normal", "--variational_lambda_dkl", "0.8",
                        "--variational_sigma", "-8.8", "--sbp_log_min", "-10"])
    o = cfg.pruning.options(SBPOptions)
    assert (o.lambda_dkl, o.sigma, o.log_min, o.threshold) == (0.8, -8.8, -10.0, 4.0)
    # config.txt holds both names; the method's own one wins there, the command line's original name over it
    path = tmp_path / "config.txt"
    path.write_text(format_config_file({**cfg.flat(), "sbp_lambda_dkl": 0.5}))
    assert parse_config(["--config", str(path)]).pruning.options(SBPOptions).lambda_dkl == 0.5
    again = parse_config(["--config", str(path), "--variational_lambda_dkl", "2"])
    assert again.pruning.options(SBPOptions).lambda_dkl == 2.0
    with pytest.raises(ConfigError, match="sbp_threshold"):
        parse_config(["--sbp_threshold", "0"])
    with pytest.raises(ConfigError, match="sbp_log_min = 0 must be below sbp_log_max = 0"):
        build_pruning("sbp_log_normal", parse_config(["--sbp_log_min", "0"]).pruning)


def original_sbp_configs():
    folder = original_config("BasicLogNormalVariational.txt").parent
    return [p for p in sorted(folder.glob("*.txt")) if "sbp_log_normal" in p.read_text()]


@pytest.mark.slow
def test_the_originals_sbp_configs_parse_and_train_one_pass(tmp_path):
    from neurcomp.training.run import train

    paths = original_sbp_configs()
    assert paths
    volume = tmp_path / "small.npy"  # 56^3: compression_ratio 100 needs ~150k voxels for the narrowest network
    np.save(volume, smooth_volume(56))
    for path in paths:
        cfg = parse_config(["--config", str(path), "--data", str(volume), "--basedir", str(tmp_path / path.stem),
                            "--max_pass", "1", "--tracking", "none"])
        o = cfg.pruning.options(SBPOptions)
        assert cfg.pruning.technique == "sbp_log_normal"
        assert (o.lambda_dkl, o.sigma, o.lambda_weight) == (0.8, -8.8, 2.0)
        info = train(cfg, progress=False)
        assert info["pruning_technique"] == "sbp_log_normal" and math.isfinite(info["psnr"])
        assert set(info["kept_fraction_per_layer"]) == {"block1_inner", "block2_inner", "block3_inner"}
        saved = json.loads((tmp_path / path.stem / cfg.expname / "info.json").read_text())
        assert saved["network_layer_sizes"] == info["network_layer_sizes"]


# --- resume -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("phase", ["prune", "finetune"])
def test_resume_after_interrupt_matches_uninterrupted(tmp_path, tiny_volume, monkeypatch, phase):
    """Ctrl-C mid-phase: the resumed run draws the same noise and ends bit for bit the same."""
    from tests.test_training import interrupt_after
    from neurcomp.training import run as run_module
    from neurcomp.training.trainer import Interrupted

    extra = dict(dropout_technique="sbp_log_normal", sbp_sigma=-1, sbp_lambda_dkl=1e4)
    full = run_module.train(parse_config(pruning_config(tmp_path, tiny_volume, "full", **extra)), progress=False)
    args = pruning_config(tmp_path, tiny_volume, "cut", **extra)
    prune_steps, finetune_steps = passes_split(parse_config(args), int(np.load(tiny_volume).size))
    stop_at = prune_steps // 2 if phase == "prune" else prune_steps + finetune_steps // 2
    interrupt_after(monkeypatch, stop_at)
    with pytest.raises(Interrupted):
        run_module.train(parse_config(args), progress=False)
    monkeypatch.undo()
    ckpt = tmp_path / "exp" / "cut" / "checkpoint.pt"
    state = read_checkpoint(ckpt)
    assert state["trainer"]["phase"] == phase and state["tag"] == "interrupt"
    resumed = run_module.train(parse_config(args + ["--resume", str(ckpt)]), progress=False)
    assert resumed["network_layer_sizes"] == full["network_layer_sizes"] and resumed["steps"] == full["steps"]
    a, b = load_model(tmp_path / "exp" / "full" / "checkpoint.pt")[0].state_dict(), load_model(ckpt)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["psnr"] == full["psnr"] and resumed["psnr_before_pruning"] == full["psnr_before_pruning"]


def test_trainer_logs_kl_live_neurons_and_snr_histograms():
    class Recorder:
        def __init__(self):
            self.metrics, self.histograms = [], []

        def log_metrics(self, metrics, step):
            self.metrics.append(metrics)

        def log_histogram(self, name, values, step):
            self.histograms.append(name)

    vol = smooth_volume(8)
    method = build_pruning("sbp_log_normal", PruningConfig(technique="sbp_log_normal"), dataset_size=vol.size)
    gated = PrunableNeurcomp(Architecture.uniform(6, 3), method)
    optim = OptimConfig(lr=1e-3, batch_size=32, sample_size=16)
    rec = Recorder()
    PruningTrainer(gated, VolumeSampler(vol, "cpu"), Phase("prune", 3, optim.lr, 1.0, optim,
                                                           regularizer=gated.regularizer),
                   tracker=rec, progress=False).run()
    m = rec.metrics[-1]
    for key in ("kl", "weight_l1", "pruning_loss", "live_neurons/block1_inner", "live_neurons/block2_inner"):
        assert f"train/{key}" in m, key  # per-pass metrics are logged as train/... (README, metrics)
    assert m["train/live_neurons"] == 12 and m["train/kl"] > 0
    assert {"pruning/log_snr/block1_inner", "pruning/mu/block1_inner", "pruning/log_sigma/block2_inner"} <= \
        set(rec.histograms)


def test_the_config_file_parses():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiment-config-files" / "pruning_sbp.txt"
    cfg = parse_config(["--config", str(path)])
    o = cfg.pruning.options(SBPOptions)
    assert cfg.pruning.technique == "sbp_log_normal" and (o.lambda_dkl, o.sigma, o.threshold) == (0.8, -8.8, 4.0)
