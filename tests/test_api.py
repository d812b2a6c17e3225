"""The Python API: the README's example runs as written; bytes and files, header without decoding."""

import re
from pathlib import Path

import numpy as np
import pytest

from neurcomp.compressors import api
from neurcomp.config.errors import InputError

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    section = README.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example(), "README.md (Python API)", "exec"), {})
    assert (tmp_path / "field.ncq").is_file()
    assert "'mode': 'abs'" in capsys.readouterr().out


def test_header_and_decoding_from_bytes_and_files(tmp_path):
    import torch

    from neurcomp.data.volume import VolumeInfo
    from neurcomp.model.architecture import Architecture
    from neurcomp.model.neurcomp import Neurcomp
    from neurcomp.quantization.bounded import encode_bounded
    from neurcomp.quantization.encode import EncoderOptions, quantize_network

    values = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)
    torch.manual_seed(0)
    info = VolumeInfo(shape=values.shape, spacing=(1.0, 2.0, 3.0), vmin=float(values.min()), vmax=float(values.max()))
    net = quantize_network(Neurcomp(Architecture.uniform(8, 2)), info, 5, EncoderOptions(quantizer="kmeans"))
    # (k-means: with the uniform records of this untrained net one voxel of the box differs from the crop
    # in the last float32 bit, the CPU matmul rounding a 54-point batch differently from a 210-point one)
    data, _ = encode_bounded(net, values, "abs", 0.1)
    (tmp_path / "f.ncq").write_bytes(data)
    header = api.read_header(tmp_path / "f.ncq")
    assert header["shape"] == (5, 6, 7) and header["spacing"] == (1.0, 2.0, 3.0) and header["version"] == 2
    assert header["error_bound"]["mode"] == "abs" and header["error_bound"]["max_abs_error"] == 0.1
    assert header["architecture"]["widths"] == [8, 8] and header["compression_ratio"] == 5 * 6 * 7 * 4 / len(data)
    whole = api.decompress(data)
    assert np.abs(whole - values).max() <= 0.1
    np.testing.assert_array_equal(api.decompress(tmp_path / "f.ncq", region=(1, 4, 0, 6, 2, 5)), whole[2:5, :, 1:4])
    assert api.decompress(data, resolution=(3, 3, 3)).shape == (3, 3, 3)
    # read_header refuses what decompress refuses (issue 25 item 13): a corrupt payload too
    broken = bytearray(data)
    broken[-1] ^= 0xFF
    with pytest.raises(InputError, match="checksum"):
        api.read_header(bytes(broken))
    with pytest.raises(InputError, match="checksum"):
        api.decompress(bytes(broken))
    with pytest.raises(InputError, match="region"):
        api.decompress(data, region=(0, 9, 0, 6, 0, 5))
    with pytest.raises(InputError, match="not found"):
        api.read_header(tmp_path / "missing.ncq")


def test_compress_to_a_ratio_and_a_file(tmp_path):
    z, y, x = np.mgrid[0:12, 0:14, 0:16] / 4.0
    values = np.sin(x) + np.cos(y) * z
    data = api.compress(values, spacing=(2, 2, 2), ratio=10, steps=10, device="cpu", path=tmp_path / "r.ncq")
    assert (tmp_path / "r.ncq").read_bytes() == data
    header = api.read_header(data)
    assert header["error_bound"] is None and header["spacing"] == (2.0, 2.0, 2.0)
    assert header["compression_ratio"] == pytest.approx(10, rel=0.05)
    # training's target_file_ratio file honours the bound: the network at the ratio, then its corrections
    bounded = api.compress(values, spacing=(2, 2, 2), ratio=10, max_abs_error=0.05, steps=10, device="cpu")
    assert api.read_header(bounded)["error_bound"]["max_abs_error"] == 0.05 and len(bounded) > len(data)
    assert np.abs(api.decompress(bounded) - values).max() <= 0.05
    with pytest.raises(InputError, match="3D"):
        api.compress(values[0])


def test_a_ratio_where_the_latent_grid_wins_compresses_and_decodes_with_it():
    from neurcomp.config.options import LATENT_FROM_RATIO

    z, y, x = np.mgrid[0:48, 0:48, 0:48] / 12.0
    values = np.sin(x) + np.cos(y) * z
    data = api.compress(values, ratio=LATENT_FROM_RATIO, steps=400, device="cpu")
    header = api.read_header(data)
    assert header["architecture"]["network"] == "latent" and header["compression_ratio"] >= LATENT_FROM_RATIO * 0.999
    decoded = api.decompress(data)
    assert decoded.shape == values.shape and np.mean((decoded - values) ** 2) < 0.5 * np.var(values)
    box = api.decompress(data, region=(2, 20, 0, 9, 5, 48))
    assert np.array_equal(box, decoded[5:48, 0:9, 2:20])
    assert api.decompress(data, resolution=(24, 24, 24)).shape == (24, 24, 24)
    from neurcomp.config.errors import ConfigError
    with pytest.raises(ConfigError, match="own resolution only"):
        api.decompress(data, region=(2, 20, 0, 9, 5, 48), resolution=(4, 4, 4))
