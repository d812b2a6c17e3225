"""The latent-grid network (model.latent_grid): its entropy model, the file's round trip, the rate
estimate against the coded size, and the codec at a target ratio on a small smooth volume."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from neurcomp.compressors import get_codec
from neurcomp.config.errors import InputError
from neurcomp.model.latent_grid import (LatentGrid, bspline_matrix, default_levels, laplace_bits, level_shapes,
                                        quantize_latent)
from neurcomp.quantization import latent_format
from neurcomp.training.latent_fit import LatentFitOptions, fit


def smooth_volume(shape=(16, 18, 20)):
    z, y, x = np.meshgrid(*(np.linspace(0, 1, n) for n in shape), indexing="ij")
    return (np.sin(3 * x) * np.cos(2 * y) + z ** 2).astype(np.float32)


def test_level_shapes_halve_down_to_two_samples():
    shape = (16, 18, 20)
    levels = default_levels(shape)
    shapes = level_shapes(shape, levels)
    assert shapes[0] == shape and shapes[1] == (8, 9, 10)
    assert min(shapes[-1]) >= 2 and min(math.ceil(n / 2 ** levels) for n in shape) < 2


def test_laplace_masses_sum_to_one_and_match_the_cdf():
    mu, b = torch.tensor(0.3), torch.tensor(1.7)
    y = torch.arange(-15.0, 16.0)  # beyond, the coder's smallest probability floors the mass
    bits = laplace_bits(y, mu, b)
    assert float(torch.sum(2.0 ** -bits)) == pytest.approx(1.0, abs=2e-4)

    def cdf(v):
        return 0.5 + 0.5 * math.copysign(1.0, v - 0.3) * (1 - math.exp(-abs(v - 0.3) / 1.7))

    for v in (-3.0, 0.0, 1.0, 5.0):
        mass = cdf(v + 0.5) - cdf(v - 0.5)
        assert float(laplace_bits(torch.tensor(v), mu, b)) == pytest.approx(-math.log2(mass), rel=1e-5)


def test_laplace_bits_keep_a_gradient_beyond_the_coders_floor():
    """A latent far in the tail is reported at the coder's 24 bits but still pulled towards the mean."""
    y = torch.tensor([40.0, -40.0], requires_grad=True)
    bits = laplace_bits(y, 0.0, torch.tensor(0.05))
    assert torch.equal(bits.detach(), torch.full((2,), 24.0))
    bits.sum().backward()
    assert float(y.grad[0]) > 0 > float(y.grad[1])


def test_quantization_modes():
    torch.manual_seed(0)
    y = torch.randn(1000, requires_grad=True)
    noisy = quantize_latent(y, "noise")
    assert float((noisy - y).detach().abs().max()) <= 0.5
    ste = quantize_latent(y, "ste")
    assert torch.equal(ste, torch.round(y))
    ste.sum().backward()
    assert torch.equal(y.grad, torch.ones_like(y))  # the identity's gradient
    with pytest.raises(ValueError):
        quantize_latent(y, "soft")


def random_model(shape=(10, 12, 14), seed=0, upsampler="linear"):
    torch.manual_seed(seed)
    model = LatentGrid(shape, channels=2, hidden=8, upsampler=upsampler)
    with torch.no_grad():
        for p in model.latents:
            p.copy_(torch.randn_like(p) * 3)
        model.log_scale.fill_(math.log(2.5))
    model.quantized_weights = True
    return model


def test_file_round_trip_is_exact_and_its_size_matches_the_rate():
    model = random_model()
    data = latent_format.encode(model, -2.0, 5.0)
    decoded, vmin, vmax = latent_format.decode(data)
    assert (vmin, vmax) == (-2.0, 5.0)
    for a, b in zip(model.latents, decoded.latents):
        assert torch.equal(torch.round(a), b)
    with torch.no_grad():
        expected = model("round").numpy()
        assert np.allclose(decoded("round").numpy(), expected, atol=2e-3)  # f16 biases, int8 weights
        volume = latent_format.decode_volume(data)
        assert np.allclose(volume, (expected + 1) * 0.5 * 7.0 - 2.0, atol=2e-2)
        rate_bytes = float(model.rate_bits(model.quantized("round"))) / 8
    latent_bytes = len(data) - len(latent_format.encode(_zeroed(model), -2.0, 5.0))
    # ANS codes within a few words of the model's information content
    assert abs(latent_bytes - rate_bytes) <= 0.01 * rate_bytes + 16


def _zeroed(model):
    copy = random_model(model.shape)
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in copy.latents:
            p.zero_()
    return copy


@pytest.mark.parametrize("finest", [0, 1])
def test_features_at_sampled_voxels_match_the_full_upsampling(finest):
    """A step on a sample interpolates at the sampled voxels only: the same rows as the full grid."""
    torch.manual_seed(0)
    model = LatentGrid((9, 12, 7), channels=2, finest=finest)
    with torch.no_grad():
        for p in model.latents:
            p.normal_(0, 3)
    y_hat = model.quantized("round")
    index = torch.randint(9 * 12 * 7, (200,))
    assert torch.allclose(model.features_at(y_hat, index), model.features(y_hat)[index], atol=1e-5)


def test_cubic_bspline_matrix_keeps_constants_and_matches_the_spline():
    m = bspline_matrix(9, 5).double()
    assert torch.allclose(m.sum(1), torch.ones(9, dtype=torch.float64))
    # inside, the cubic B-spline reproduces a linear ramp and, at a sample, weighs it 1/6, 4/6, 1/6
    ramp = torch.arange(5, dtype=torch.float64)
    assert torch.allclose((m @ ramp)[2:7], torch.linspace(1, 3, 5, dtype=torch.float64))
    assert torch.allclose(m[4, 1:4], torch.tensor([1, 4, 1], dtype=torch.float64) / 6)


@pytest.mark.parametrize("shape", [(9, 12, 7), (20, 6, 11)])
def test_cubic_upsampling_is_separable_and_sampled_rows_match(shape):
    torch.manual_seed(0)
    model = LatentGrid(shape, channels=2, finest=1, upsampler="cubic")
    with torch.no_grad():
        for p in model.latents:
            p.normal_(0, 3)
    y_hat = model.quantized("round")
    full = model.features(y_hat)
    index = torch.randint(full.shape[0], (200,))
    assert torch.allclose(model.features_at(y_hat, index), full[index])
    weights = torch.randn(200, full.shape[1])  # and the same gradient reaches every latent
    grads = [torch.autograd.grad((f * weights).sum(), model.latents)
             for f in (model.features_at(model.quantized("ste"), index), model.features(model.quantized("ste"))[index])]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*grads))
    # one level against the three 1D matrices applied as a dense 3D operator
    level = y_hat[1][0, 0].double()
    mz, my, mx = (bspline_matrix(o, i).double() for o, i in zip(shape, level.shape))
    dense = torch.einsum("zk,yl,xm,klm->zyx", mz, my, mx, level)
    assert torch.allclose(full[:, 2].view(shape).double(), dense, atol=1e-4)


@pytest.mark.parametrize("finest", [0, 1])
def test_cubic_features_on_a_sub_lattice_are_the_full_upsamplings_rows(finest):
    torch.manual_seed(0)
    shape = (9, 12, 7)
    model = LatentGrid(shape, channels=2, finest=finest, upsampler="cubic")
    with torch.no_grad():
        for p in model.latents:
            p.normal_(0, 3)
    y_hat = model.quantized("round")
    rows = (torch.tensor([0, 3, 8]), torch.tensor([1, 2, 5, 11]), torch.tensor([0, 6]))
    full = model.features(y_hat).view(*shape, -1)
    expected = full[rows[0]][:, rows[1]][:, :, rows[2]].reshape(-1, full.shape[-1])
    assert torch.allclose(model.features_on(y_hat, rows), expected, atol=1e-5)


def test_cubic_file_round_trip_and_a_version_3_file_still_decodes():
    cubic = random_model(upsampler="cubic")
    data = latent_format.encode(cubic, 0.0, 1.0)
    decoded, _, _ = latent_format.decode(data)
    assert decoded.upsampler == "cubic"
    with torch.no_grad():
        assert np.allclose(decoded("round").numpy(), cubic("round").numpy(), atol=2e-3)
    linear = latent_format.encode(random_model(), 0.0, 1.0)
    old = linear[:4] + bytes([3]) + linear[5:]  # a version-3 file: the same bytes but the version
    assert np.array_equal(latent_format.decode_volume(old), latent_format.decode_volume(linear))
    with pytest.raises(InputError, match="flags"):  # a version-3 file has no upsampler flag
        latent_format.decode(data[:4] + bytes([3]) + data[5:], "x.nclg")


def test_feature_gains_travel_in_the_file_and_a_file_without_them_reads_as_before():
    model = random_model(upsampler="cubic")
    with torch.no_grad():
        model.feature_gain.copy_(0.5 ** torch.arange(model.feature_gain.numel()) * 1.5)  # f16-exact
    data = latent_format.encode(model, 0.0, 1.0)
    decoded, _, _ = latent_format.decode(data)
    assert torch.equal(decoded.feature_gain, model.feature_gain)
    with torch.no_grad():
        assert np.allclose(decoded("round").numpy(), model("round").numpy(), atol=2e-3)
    plain = latent_format.encode(random_model(upsampler="cubic"), 0.0, 1.0)
    assert not plain[4 + 1 + 12 + 7] & latent_format.GAIN  # the flags byte; ones: no gains in the file, no bytes spent
    old = plain[:4] + bytes([4]) + plain[5:]  # a version-4 file: the same bytes but the version
    assert np.array_equal(latent_format.decode_volume(old), latent_format.decode_volume(plain))
    with pytest.raises(InputError, match="flags"):  # version 4 had no gain flag
        latent_format.decode(data[:4] + bytes([4]) + data[5:], "x.nclg")


def test_a_checkpoint_from_before_the_gains_loads_with_unit_gains():
    model = random_model()
    state = {k: v for k, v in model.state_dict().items() if k != "feature_gain"}
    fresh = LatentGrid(model.shape, channels=2, hidden=8)
    fresh.feature_gain.fill_(3.0)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.feature_gain, torch.ones_like(fresh.feature_gain))


def test_another_resolution_decodes():
    data = latent_format.encode(random_model(), 0.0, 1.0)
    assert latent_format.decode_volume(data, shape=(20, 24, 28)).shape == (20, 24, 28)


@pytest.mark.parametrize("cut", [5, 40, -3])
def test_a_truncated_or_padded_file_is_refused_in_one_line(cut):
    data = latent_format.encode(random_model(), 0.0, 1.0)
    broken = data[:cut] if cut > 0 else data + b"\0" * -cut
    with pytest.raises(InputError):
        latent_format.decode(broken, "x.nclg")


def test_fit_lands_under_the_budget_and_beats_the_mean():
    values = smooth_volume()
    budget = values.size * 4 // 20  # at 1/40 the MLP and the header alone take 470 of 576 bytes
    options = LatentFitOptions(steps=300, lambda0=1e-2, finest=0, context_hidden=0)
    model, vmin, vmax, report = fit(values, budget, options)
    data = latent_format.encode(model, vmin, vmax)
    assert len(data) <= budget
    decoded = latent_format.decode_volume(data)
    mse = float(np.mean((decoded - values) ** 2))
    assert mse < 0.05 * float(np.var(values))  # far better than predicting the mean
    assert report["history"] and report["train_seconds"] > 0


@pytest.mark.parametrize("upsampler", ["linear", "cubic"])
def test_the_codec_reaches_its_ratio_and_decodes_from_bytes(upsampler):
    values = smooth_volume()
    codec = get_codec("latent", steps=200, lambda0=1e-2, upsampler=upsampler)
    result = codec.compress_to_ratio(values, 20)
    assert result.ratio >= 20 * 0.999
    mse = float(np.mean((result.decoded - values) ** 2))
    assert mse < 0.05 * float(np.var(values))
    assert np.array_equal(codec.decompress(result.payload, values.shape), result.decoded)


def context_model(shape=(12, 14, 16), channels=2, seed=0):
    """A model whose context MLP is far from the factorized start, so every level's parameters vary."""
    torch.manual_seed(seed)
    model = LatentGrid(shape, channels=channels, hidden=8, context_hidden=8)
    with torch.no_grad():
        for p in model.latents:
            p.copy_(torch.randn_like(p) * 3)
        for layer in model.context.layers:
            layer.weight.normal_(0, 0.05)
            layer.bias.normal_(0, 0.05)
        model.log_scale.fill_(math.log(2.5))
    model.quantized_weights = True
    return model


def _ans_bytes(data):
    """The ANS words' bytes: the file's last field, counted by the u32 before it."""
    for offset in range(len(data) - 4, 0, -1):
        (count,) = np.frombuffer(data[offset:offset + 4], "<u4")
        if offset + 4 + 4 * int(count) == len(data):
            return 4 * int(count)
    raise AssertionError("no ANS word count found")


def test_context_model_decodes_the_encoded_latents_exactly():
    model = context_model()
    data = latent_format.encode(model, 0.0, 1.0)
    decoded, _, _ = latent_format.decode(data)
    assert decoded.context is not None
    for a, b in zip(model.latents, decoded.latents):
        assert torch.equal(torch.round(a), b)
    assert latent_format.encode(decoded, 0.0, 1.0) == data  # the integers survive the round trip
    with torch.no_grad():
        b = model.laplace_scale(model.quantized("round"), 0)
        assert float(b.std()) > 0.05  # per-latent, not per level


def test_context_integer_forward_matches_the_training_forward():
    from neurcomp.model.latent_context import integer_forward

    model = context_model()
    parent = torch.round(model.latents[1].detach())
    shape = tuple(model.latents[0].shape[2:])
    with torch.no_grad():
        log_b = model.context(parent, shape)
    exact_log_b = integer_forward(model.context.integer_layers(), parent[0].numpy().astype(np.int64), shape)
    assert np.allclose(log_b.numpy().reshape(model.channels, -1), exact_log_b, atol=1e-4)


@pytest.mark.parametrize("context_hidden", [0, 8])
def test_rate_estimate_matches_the_ans_words(context_hidden):
    model = context_model() if context_hidden else random_model((12, 14, 16))
    data = latent_format.encode(model, 0.0, 1.0)
    with torch.no_grad():
        rate_bytes = float(model.rate_bits(model.quantized("round"))) / 8
    assert abs(_ans_bytes(data) - rate_bytes) <= 0.01 * rate_bytes + 8


def test_fit_with_context_lands_within_five_percent_under_the_budget():
    # noise makes every byte worth spending: on the smooth volume alone the fit needs fewer bytes
    # than a 1/10 budget and (rightly) stops short of it
    values = smooth_volume() + 0.2 * np.random.default_rng(0).standard_normal((16, 18, 20)).astype(np.float32)
    budget = values.size * 4 // 10
    model, vmin, vmax, report = fit(values, budget, LatentFitOptions(steps=300, lambda0=1e-2, finest=0, context_hidden=4))
    data = latent_format.encode(model, vmin, vmax)
    assert 0.95 * budget <= len(data) <= budget
    decoded = latent_format.decode_volume(data)
    assert float(np.mean((decoded - values) ** 2)) < 0.05 * float(np.var(values))


def test_pyramid_start_lands_at_the_target_under_the_context_model():
    from neurcomp.training.latent_init import pyramid_init

    values = smooth_volume((24, 26, 28)) + 0.05 * np.random.default_rng(1).standard_normal((24, 26, 28))
    volume = torch.from_numpy(((values - values.min()) / np.ptp(values) * 2 - 1).astype(np.float32))
    torch.manual_seed(0)
    model = LatentGrid(volume.shape, hidden=8, context_hidden=8, skip=True)
    target = 4000.0
    pyramid_init(model, volume, target)
    with torch.no_grad():
        bits = float(model.rate_bits(model.quantized("round")))
    assert abs(bits / target - 1) < 0.1  # the factorized estimate alone lands far under it


def test_cubic_pyramid_start_decodes_the_volume_before_any_training():
    """The start is a working coder: the least-squares spline pyramid, the gains at the steps and
    the skip path at one decode the smooth volume far better than its mean, at the target rate, and
    the MLP and the skip path see values of order one (a latent count of 10^3 would not be)."""
    from neurcomp.training.latent_init import pyramid_init

    values = smooth_volume((24, 26, 28))
    volume = torch.from_numpy(((values - values.min()) / np.ptp(values) * 2 - 1).astype(np.float32))
    torch.manual_seed(0)
    model = LatentGrid(volume.shape, hidden=8, finest=1, skip=True, upsampler="cubic")
    target = 6000.0
    pyramid_init(model, volume, target)
    with torch.no_grad():
        y_hat = model.quantized("round")
        bits = float(model.rate_bits(y_hat))
        relative_mse = float(torch.mean((model("round") - volume) ** 2) / volume.var())
        gained = model.features(y_hat) * model.feature_gain
    assert abs(bits / target - 1) < 0.1
    assert relative_mse < 1e-3
    assert float(gained.abs().max()) < 4.0
    assert torch.equal(model.feature_gain, model.feature_gain.half().float())  # as the file stores them


def test_a_small_file_gets_a_smaller_network_that_fits():
    """Where the default network's weights would take most of the file (bucky at ratio 200: 655
    bytes against 1051), the fit drops the context and narrows the synthesis, and lands under the
    budget better than the mean."""
    from neurcomp.training.latent_fit import SMALL_SHARE, overhead_bytes, sized_model

    volume = smooth_volume((32, 32, 32))
    budget = volume.size * 4 // 200
    options = LatentFitOptions(steps=300)
    assert overhead_bytes(LatentGrid(volume.shape, hidden=16, finest=1, context_hidden=16)) > budget
    small = sized_model(volume.shape, budget, options)
    assert small.context is None and overhead_bytes(small) <= SMALL_SHARE * budget
    big = sized_model(volume.shape, volume.size * 4 // 10, options)  # a roomy file keeps the options' network
    assert big.context is not None and big.hidden == options.hidden
    model, vmin, vmax, _ = fit(volume, budget, options)
    data = latent_format.encode(model, vmin, vmax)
    assert len(data) <= budget
    decoded = latent_format.decode_volume(data)
    assert np.mean((decoded - volume) ** 2) < np.var(volume)


def test_a_fit_that_ends_at_the_mean_starts_again_from_another_seed(monkeypatch):
    from neurcomp.training import latent_fit
    from neurcomp.training.recovery import TrainingDiverged

    once, starts = latent_fit._fit_once, []

    def first_collapses(*args):
        model, vmin, vmax, report = once(*args)
        starts.append(report["seed"])
        return model, vmin, vmax, {**report, "relative_mse": 1.0} if len(starts) == 1 else report

    monkeypatch.setattr(latent_fit, "_fit_once", first_collapses)
    values = smooth_volume((10, 12, 14))
    options = LatentFitOptions(steps=40, context_hidden=0, hidden=8)
    model, _, _, report = fit(values, values.size * 4 // 10, options)
    assert starts == [0, latent_fit.RESTART_SEED_STEP] and report["restart"] == 1
    assert report["relative_mse"] < latent_fit.COLLAPSE_MSE and report["options"]["seed"] == 0

    monkeypatch.setattr(latent_fit, "COLLAPSE_MSE", -1.0)  # every start "collapses": a one-line refusal
    starts.clear()
    with pytest.raises(TrainingDiverged, match="no better than the volume's mean in 3 starts"):
        fit(values, values.size * 4 // 10, options)
    assert len(starts) == latent_fit.MAX_RESTARTS + 1


def test_the_time_benchmark_reports_seconds_to_within_1_db_and_to_sz3(tmp_path):
    from benchmarks import latent_time

    path = tmp_path / "smooth.npy"
    np.save(path, smooth_volume((16, 16, 16)))
    out = tmp_path / "time"
    rows = latent_time.main(["--volumes", str(path), "--ratio", "20", "--steps", "80", "--output", str(out)])
    row = rows[0]
    assert row["psnr"] > 20 and row["train_s"] > 0 and row["history"][-1]["step"] >= 79
    assert row["within_1db_s"] is not None and row["within_1db_s"] <= row["history"][-1]["seconds"]
    assert row["to_sz3_s"] == latent_time.first_seconds(row["history"], row["sz3_psnr"])
    assert (out / "latent_time.json").is_file() and "within 1 dB s" in (out / "latent_time.md").read_text()
    assert latent_time.first_seconds([{"psnr": 30, "seconds": 1}, {"psnr": 40, "seconds": 2}], 35) == 2
    assert latent_time.first_seconds([{"psnr": 30, "seconds": 1}], 35) is None


@pytest.mark.parametrize("sample", ["voxels", "lattice"])
def test_a_sampled_fit_of_a_larger_volume_beats_the_mean(sample):
    values = smooth_volume((16, 18, 20))
    options = LatentFitOptions(steps=150, context_hidden=0, points_per_step=1000, sample=sample)
    model, vmin, vmax, report = fit(values, values.size * 4 // 20, options)
    decoded = latent_format.decode_volume(latent_format.encode(model, vmin, vmax))
    assert float(np.mean((decoded - values) ** 2)) < 0.1 * float(np.var(values))


@pytest.mark.parametrize("child_shape", [(12, 14, 16), (5, 7, 6), (1, 3, 2)])
def test_context_forward_per_parent_is_the_mlp_on_every_childs_rows(child_shape):
    """LatentContext.forward computes the hidden layer once per parent voxel and parity class: the
    same values and gradients as the MLP applied to each child's row of torch_features."""
    from neurcomp.model.latent_context import torch_features

    context = context_model().context
    # not integers: with integer latents and quantized weights a hidden unit can sit exactly at 0,
    # where the two summation orders may fall on either side of the ReLU's kink
    parent = (torch.randn(1, 2, *((n + 1) // 2 for n in child_shape)) * 3).requires_grad_()

    def rows_form(parent):
        (w1, b1), (w2, b2) = context.quantized_layers()
        h = torch.relu(F.linear(torch_features(parent, child_shape), w1, b1))
        return F.linear(h, w2, b2).t().reshape(1, 2, *child_shape)

    fast, rows = context(parent, child_shape), rows_form(parent)
    assert torch.allclose(fast, rows, atol=1e-5)
    weights = torch.randn_like(rows)
    params = [parent, *context.parameters()]
    for a, b in zip(torch.autograd.grad((fast * weights).sum(), params),
                    torch.autograd.grad((rows * weights).sum(), params)):
        assert torch.allclose(a, b, atol=1e-4)


def test_steps_left_to_the_volume_are_more_on_a_small_volume(monkeypatch):
    """LatentFitOptions(steps=0): default_steps, SMALL_VOLUME_STEPS up to SMALL_VOLUME_VOXELS and
    LARGE_VOLUME_STEPS above; the report says how many were run."""
    from neurcomp.training import latent_fit

    assert latent_fit.default_steps(66 ** 3) == latent_fit.SMALL_VOLUME_STEPS
    assert latent_fit.default_steps(128 * 96 * 114) == latent_fit.LARGE_VOLUME_STEPS
    monkeypatch.setattr(latent_fit, "SMALL_VOLUME_STEPS", 40)
    monkeypatch.setattr(latent_fit, "LARGE_VOLUME_STEPS", 20)
    z, y, x = np.mgrid[:12, :12, :12] / 11.0
    values = np.exp(-((z - 0.5) ** 2 + (y - 0.4) ** 2 + (x - 0.6) ** 2) * 8)  # smooth: a fit beats the mean
    for voxels, steps in ((12 ** 3, 40), (12 ** 3 - 1, 20)):
        monkeypatch.setattr(latent_fit, "SMALL_VOLUME_VOXELS", voxels)
        report = fit(values, 12 ** 3, LatentFitOptions(steps=0, context_hidden=0))[3]
        assert report["steps"] == steps and len(report["history"]) >= 1
