"""Every unusable input raises InputError("<path>: <problem>") naming the file."""

import re

import h5py
import numpy as np
import pytest

from neurcomp.config.errors import InputError, NeurcompError
from neurcomp.data.readers import read_volume
from neurcomp.data.writers import write_cvol, write_npy, write_raw


def expect_error(path, match, **kwargs) -> str:
    with pytest.raises(InputError, match=match) as info:
        read_volume(path, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


def ramp(shape) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.npy", "file not found")


def test_unknown_extension_lists_supported(tmp_path):
    path = tmp_path / "volume.txt"
    path.write_text("1 2 3")
    message = expect_error(path, "unknown volume extension")
    for ext in (".npy", ".raw", ".h5", ".hdf5", ".cvol", ".vti"):
        assert ext in message


def test_not_3d(tmp_path):
    write_npy(tmp_path / "flat.npy", ramp((4, 5)))
    expect_error(tmp_path / "flat.npy", re.escape("expected a 3D volume (Z, Y, X), got shape (4, 5)"))


def test_4d_without_channel(tmp_path):
    write_npy(tmp_path / "vec.npy", ramp((3, 4, 5, 3)))
    expect_error(tmp_path / "vec.npy", "3 channels.*channel=0..2")
    expect_error(tmp_path / "vec.npy", "channel 3 out of range", channel=3)


def test_nan_and_inf_are_counted(tmp_path):
    values = ramp((3, 4, 5))
    values[0, 0, :2] = np.nan
    values[2, 3, 4] = -np.inf
    write_npy(tmp_path / "bad.npy", values)
    expect_error(tmp_path / "bad.npy", "2 NaN and 1 Inf values of 60")


def test_float64_beyond_float32_range(tmp_path):
    values = ramp((3, 4, 5)).astype(np.float64)
    values[1, 1, 1] = 1e300
    write_npy(tmp_path / "huge.npy", values)
    expect_error(tmp_path / "huge.npy", "1 Inf values.*float32 range")


def test_constant_volume(tmp_path):
    write_raw(tmp_path / "flat_4x4x4_uint8.raw", np.full((4, 4, 4), 7, dtype=np.uint8))
    expect_error(tmp_path / "flat_4x4x4_uint8.raw", "constant volume")


def test_axis_shorter_than_two(tmp_path):
    write_npy(tmp_path / "slab.npy", ramp((1, 4, 5)))
    expect_error(tmp_path / "slab.npy", "at least 2 voxels")


def test_ambiguous_hdf5_lists_datasets(tmp_path):
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("pressure", data=ramp((2, 3, 4)))
        file.create_dataset("sim/temperature", data=ramp((5, 3, 4)))
    message = expect_error(path, "2 3D datasets")
    assert "pressure (2, 3, 4)" in message and "sim/temperature (5, 3, 4)" in message
    expect_error(path, "no dataset 'density'", data_key="density")
    assert read_volume(path, data_key="sim/temperature").shape == (5, 3, 4)


def test_raw_without_layout_in_name(tmp_path):
    (tmp_path / "scan.raw").write_bytes(bytes(64))
    expect_error(tmp_path / "scan.raw", "name the file like")


def test_truncated_raw_says_expected_and_actual_bytes(tmp_path):
    path = tmp_path / "cut_4x4x4_uint16.raw"
    path.write_bytes(bytes(100))
    expect_error(path, "truncated: 4x4x4 uint16 needs 128 bytes, the file has 100")


def test_truncated_cvol(tmp_path):
    path = tmp_path / "cut.cvol"
    write_cvol(path, np.random.default_rng(0).random((20, 30, 40), dtype=np.float32))  # 2 LZ4 chunks
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    expect_error(path, "truncated")
    path.write_bytes(data[:40])
    expect_error(path, "truncated: header")


def test_not_a_cvol(tmp_path):
    (tmp_path / "junk.cvol").write_bytes(b"JUNK" + bytes(60))
    expect_error(tmp_path / "junk.cvol", "not a cvol file")


def test_vti_unknown_array(tmp_path):
    from neurcomp.data.writers import write_vti

    write_vti(tmp_path / "v.vti", ramp((2, 3, 4)), spacing=(1, 1, 1))
    expect_error(tmp_path / "v.vti", "no point data array 'rho'; arrays: value", data_key="rho")


def test_writer_refuses_values_outside_the_dtype(tmp_path):
    with pytest.raises(NeurcompError, match="outside the uint8 range"):
        write_raw(tmp_path / "w_2x2x2_uint8.raw", np.full((2, 2, 2), 300.0), dtype="uint8")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_truncated_vti(tmp_path):
    from neurcomp.data.writers import write_vti

    path = tmp_path / "cut.vti"
    write_vti(path, ramp((4, 5, 6)), spacing=(1, 1, 1))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    expect_error(path, "truncated data block")
