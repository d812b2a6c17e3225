"""Volume memory: stored-precision sampling, lazy (memory-mapped) volumes, brick streaming."""

import json

import h5py
import numpy as np
import pytest
import torch

from neurcomp.config.errors import InputError
from neurcomp.config.options import parse_config
from neurcomp.data.lazy import LazyVolume
from neurcomp.data.readers import open_volume_lazily, read_volume
from neurcomp.data.readers.base import value_range
from neurcomp.data.readers.hdf5 import H5Array
from neurcomp.data.volume import Volume
from neurcomp.model.inference import grid_coordinates
from neurcomp.training.run import train
from neurcomp.training.session import load_training_volume
from neurcomp.training.sampling import BrickSampler, NativeVolumeSampler, VolumeSampler, make_sampler, resolve_storage


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a busy 2-core machine two threads spin-wait (50x slower steps)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_volume(dtype, shape=(9, 11, 13), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    return (rng.standard_normal(shape) * 100).astype(dtype)


def probe_coords(shape, n=4000, seed=1) -> torch.Tensor:
    """Random points, every grid point and the corners of the domain."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.rand(n, 3, generator=g) * 2 - 1, grid_coordinates(shape, slice(None), "cpu"),
                      torch.tensor([[-1.0, -1, -1], [1, 1, 1], [1, -1, 1], [-1, 1, -1], [1, 0.5, -1]])])


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", "float16", "float32"])
def test_stored_precision_sampling_equals_float32(dtype):
    raw = random_volume(dtype)
    vol = Volume(values=raw.astype(np.float32), source_dtype=dtype)
    ref = VolumeSampler(vol.normalized(), "cpu", with_gradients=True)
    native = NativeVolumeSampler(raw, vol.vmin, vol.vmax, "cpu", with_gradients=True)
    assert native.values.element_size() == np.dtype(dtype).itemsize  # resident in the stored precision
    coords = probe_coords(raw.shape)
    a, b = ref.interpolate(coords), native.interpolate(coords)
    torch.testing.assert_close(b[:, 0], a[:, 0], rtol=0, atol=1e-6)
    scale = float(a[:, 1:].abs().max())  # gradients of random data are large (up to ~2 (n-1))
    torch.testing.assert_close(b[:, 1:], a[:, 1:], rtol=0, atol=1e-6 * scale)
    # without gradients, through sample(): same positions (same generator) and values
    ref = VolumeSampler(vol.normalized(), "cpu", seed=5)
    native = NativeVolumeSampler(raw, vol.vmin, vol.vmax, "cpu", seed=5)
    (c1, v1, g1), (c2, v2, g2) = ref.sample(1000), native.sample(1000)
    assert torch.equal(c1, c2) and g1 is None and g2 is None
    torch.testing.assert_close(v2, v1, rtol=0, atol=1e-6)


def test_storage_policy_and_bytes_per_voxel():
    assert resolve_storage("auto", "uint8") == "native" and resolve_storage("auto", "float16") == "native"
    assert resolve_storage("auto", "float32") == "float32" and resolve_storage("native", "float32") == "native"
    assert resolve_storage("native", "float64") == "float32" and resolve_storage("float32", "uint8") == "float32"
    raw = random_volume("uint8", (6, 7, 8))
    vol = Volume(values=raw.astype(np.float32), source_dtype="uint8")
    n = raw.size
    assert VolumeSampler(vol.normalized(), "cpu").resident_bytes() == 4 * n
    assert VolumeSampler(vol.normalized(), "cpu", with_gradients=True).resident_bytes() == 16 * n
    assert NativeVolumeSampler(raw, vol.vmin, vol.vmax, "cpu", with_gradients=True).resident_bytes() == n
    from neurcomp.config.options import ScalingConfig

    assert isinstance(make_sampler(vol, "cpu"), NativeVolumeSampler)  # auto: uint8 stays uint8
    assert type(make_sampler(vol, "cpu", scaling=ScalingConfig(volume_storage="float32"))) is VolumeSampler


@pytest.mark.parametrize("with_gradients", [False, True])
def test_brick_samples_match_float32_interpolation(with_gradients):
    raw = random_volume("uint16", (14, 17, 20))
    vol = Volume(values=raw.astype(np.float32), source_dtype="uint16")
    ref = VolumeSampler(vol.normalized(), "cpu", with_gradients=with_gradients)
    bricks = BrickSampler(raw, vol.vmin, vol.vmax, "cpu", seed=3, with_gradients=with_gradients, brick_size=4,
                          bricks_resident=10, refresh_steps=2)
    assert not bricks.all_resident and bricks.num_bricks == 4 * 4 * 5
    for _ in range(20):  # across several refreshes
        coords, values, grads = bricks.sample(500)
        assert coords.min() >= -1 and coords.max() <= 1
        expected = ref.interpolate(coords)
        # coords are rounded to float32 from the exact in-brick position: allow for the slope
        torch.testing.assert_close(values, expected[:, :1], rtol=0, atol=2e-5)
        if with_gradients:
            torch.testing.assert_close(grads, expected[:, 1:], rtol=0, atol=2e-5 * float(expected[:, 1:].abs().max()))
    # host-side interpolation (for checks) equals the resident one
    c = torch.rand(300, 3) * 2 - 1
    expected = ref.interpolate(c)
    torch.testing.assert_close(bricks.interpolate(c), expected, rtol=0,
                               atol=1e-5 * max(1.0, float(expected.abs().max())))
    bricks.close()


def test_brick_samples_are_uniform_over_the_volume():
    raw = random_volume("uint8", (14, 17, 20))  # uneven bricks at the far edges (13, 16, 19 cells)
    bricks = BrickSampler(raw, 0.0, 255.0, "cpu", seed=0, brick_size=4, bricks_resident=8, refresh_steps=1,
                          prefetch=False)
    coords = torch.cat([bricks.sample(20)[0] for _ in range(2500)])
    # each of 27 equal sub-boxes gets 1/27 of the points (about 50000 points from about 5000 bricks)
    cell = ((coords + 1) / 2 * 3).clamp(max=2.999).long()
    share = torch.bincount(cell[:, 0] * 9 + cell[:, 1] * 3 + cell[:, 2], minlength=27).double() / len(coords) * 27
    assert share.min() > 0.75 and share.max() < 1.25, share
    assert abs(float(coords.mean())) < 0.03


def test_brick_device_memory_is_bounded_by_the_resident_set(tmp_path):
    sizes = {}
    for n in (24, 60):
        path = tmp_path / f"v{n}.npy"
        np.save(path, random_volume("uint8", (n, n, n)))
        lazy = open_volume_lazily(path)
        sampler = BrickSampler(lazy.values, lazy.vmin, lazy.vmax, "cpu", brick_size=8, bricks_resident=6)
        sizes[n] = sampler.resident_bytes()
        sampler.sample(100)
        sampler.close()
    assert sizes[24] == sizes[60] == 6 * 11 ** 3  # bricks x (brick_size + 3)^3 x 1 byte


def test_brick_sampler_resumes_exactly():
    raw = random_volume("float32", (12, 13, 14))
    args = dict(vmin=float(raw.min()), vmax=float(raw.max()), device="cpu", brick_size=4, bricks_resident=5,
                refresh_steps=3)
    a = BrickSampler(raw, seed=7, **args)
    for _ in range(5):
        a.sample(64)
    state = a.state_dict()
    expected = [a.sample(64) for _ in range(8)]
    b = BrickSampler(raw, seed=99, **args)
    b.load_state_dict(state)
    for (c1, v1, _), (c2, v2, _) in zip(expected, [b.sample(64) for _ in range(8)]):
        assert torch.equal(c1, c2) and torch.equal(v1, v2)


def test_open_volume_lazily_npy_raw_hdf5(tmp_path):
    values = random_volume("uint16", (10, 12, 14))
    np.save(tmp_path / "v.npy", values)
    values.tofile(tmp_path / "v_14x12x10_uint16.raw")
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f.create_dataset("group/field", data=values, chunks=(3, 12, 14))
        f.create_dataset("other", data=np.zeros(5))
    np.save(tmp_path / "c.npy", np.stack([values, values // 2], axis=-1))
    reference = read_volume(tmp_path / "v.npy")
    for name, kwargs, kind in [("v.npy", {}, np.memmap), ("v_14x12x10_uint16.raw", {}, np.memmap),
                               ("v.h5", {}, H5Array), ("c.npy", {"channel": 1}, np.memmap)]:
        lazy = open_volume_lazily(tmp_path / name, **kwargs)
        assert isinstance(lazy, LazyVolume) and lazy.lazy
        assert isinstance(lazy.values, kind) or isinstance(getattr(lazy.values, "base", None), kind), name
        assert lazy.shape == (10, 12, 14) and lazy.source_dtype == "uint16"
        expected = values // 2 if name == "c.npy" else values
        assert (lazy.vmin, lazy.vmax) == (expected.min(), expected.max())
        np.testing.assert_array_equal(lazy.read(slice(2, 5), slice(0, 3), slice(4, 9)), expected[2:5, 0:3, 4:9])
        if name != "c.npy":
            np.testing.assert_allclose(lazy.normalized(), reference.normalized(), atol=1e-6)
    # the value range is found slab by slab
    assert value_range("x", values, slab_voxels=200) == (values.min(), values.max())
    # an HDF5 dataset answers what the end-of-training metrics and writers ask
    h5 = open_volume_lazily(tmp_path / "v.h5", data_key="group/field").values
    assert (h5.min(), h5.max()) == (values.min(), values.max())
    np.testing.assert_array_equal(h5.reshape(-1), values.reshape(-1))
    np.testing.assert_array_equal(np.asarray(h5)[:, 3], values[:, 3])
    # formats that cannot be mapped (.vti, .cvol) are read whole and still work
    from neurcomp.data.writers import write_vti

    write_vti(tmp_path / "v.vti", values.astype(np.float32), (1.0, 1.0, 1.0))
    whole = open_volume_lazily(tmp_path / "v.vti")
    assert not whole.lazy and whole.shape == (10, 12, 14) and whole.vmax == values.max()


@pytest.mark.parametrize("data, message", [
    (np.full((4, 4, 4), 3.0, np.float32), "constant volume"),
    (np.where(np.arange(64).reshape(4, 4, 4) == 5, np.nan, 1.0).astype(np.float32), "1 NaN and 0 Inf values of 64"),
    (np.zeros((4, 4), np.float32), "expected a 3D volume"),
])
def test_open_volume_lazily_rejects_bad_volumes(tmp_path, data, message):
    np.save(tmp_path / "bad.npy", data)
    with pytest.raises(InputError, match=message):
        open_volume_lazily(tmp_path / "bad.npy")


def smooth_volume(path, n=20):
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n)] * 3, indexing="ij")
    values = (np.sin(2 * x) * np.cos(2 * y) + 0.5 * z ** 2) * 100 + 120
    np.save(path, values.astype(np.uint8))
    return path


def run_config(tmp_path, volume, expname, **extra):
    opts = {"data": volume, "basedir": tmp_path / "exp", "expname": expname, "features_per_layer": 32,
            "n_layers": 2, "max_pass": 30, "batch_size": 32, "sample_size": 16, "lr": 2e-3, "pass_decay": 10,
            "lr_decay": 0.5, "checkpoint_every": 0, "tracking": "none", **extra}
    path = tmp_path / f"{expname}.txt"
    path.write_text("".join(f"{k} = {v}\n" for k, v in opts.items()))
    return parse_config(["--config", str(path)])


def test_brick_streaming_from_a_memory_mapped_volume_trains_like_in_memory(tmp_path):
    volume = smooth_volume(tmp_path / "smooth.npy")  # 20^3 uint8: 19^3 cells, 5^3 bricks of 4
    stream = {"stream_bricks": "true", "brick_size": 4, "bricks_resident": 64, "brick_refresh_steps": 2}
    cfg = run_config(tmp_path, volume, "check", **stream)
    lazy = load_training_volume(cfg)
    assert isinstance(lazy, LazyVolume) and isinstance(lazy.values, np.memmap)
    sampler = make_sampler(lazy, "cpu", scaling=cfg.scaling)
    assert isinstance(sampler, BrickSampler) and not sampler.all_resident  # 64 of 125 bricks on the device
    results = {}
    for name, extra in [("memory_a", {}), ("memory_b", {"seed": 1}),
                        ("stream", stream)]:
        results[name] = train(run_config(tmp_path, volume, name, **extra), progress=False)
    noise = abs(results["memory_a"]["psnr"] - results["memory_b"]["psnr"])
    assert results["memory_a"]["psnr"] > 25
    assert abs(results["stream"]["psnr"] - results["memory_a"]["psnr"]) < max(1.5, 3 * noise), \
        {k: r["psnr"] for k, r in results.items()}
    # same outputs as an in-memory run
    out = tmp_path / "exp"
    assert sorted(p.name for p in (out / "stream").iterdir()) == sorted(p.name for p in (out / "memory_a").iterdir())
    info = json.loads((out / "stream" / "info.json").read_text())
    assert info["steps"] == results["memory_a"]["steps"] and info["volume_dtype"] == "uint8"
