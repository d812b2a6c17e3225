"""Hostile volume files: generated truncations, byte flips and crafted headers of every input format.

Whatever the damage, a reader either returns a usable volume or raises a one-line
`InputError("<path>: ...")`; never another exception type, never a huge allocation. The training
entry script turns each into one `error: ...` line on stderr, a non-zero exit and no output folder.
"""

import io
import re
import struct

import h5py
import numpy as np
import pytest

from neurcomp.config.errors import InputError
from neurcomp.data.readers import open_volume_lazily, read_volume
from neurcomp.data.writers import write_cvol, write_npy, write_raw, write_vti

SHAPE = (6, 7, 8)  # (Z, Y, X)
SPACING = b'Spacing="1.0 1.0 1.0 "'  # as data.writers.write_vti writes it


def values() -> np.ndarray:
    z, y, x = np.meshgrid(*(np.linspace(0, 1, n) for n in SHAPE), indexing="ij")
    return (np.sin(3 * x) + y * z).astype(np.float32)


def make_valid(folder, kind: str):
    """A valid file of `kind`: (path, read_volume keyword arguments)."""
    v = values()
    if kind == "npy":
        write_npy(folder / "v.npy", v)
        return folder / "v.npy", {}
    if kind == "raw":
        write_raw(folder / "v_8x7x6_float32.raw", v)
        return folder / "v_8x7x6_float32.raw", {}
    if kind == "h5":
        with h5py.File(folder / "v.h5", "w") as file:
            file.create_dataset("group/density", data=v)
            file.create_dataset("chunked", data=v, chunks=(2, 7, 8), compression="gzip")
        return folder / "v.h5", {"data_key": "group/density"}
    if kind == "h5gz":
        path, _ = make_valid(folder, "h5")
        return path, {"data_key": "chunked"}
    if kind == "cvol":
        write_cvol(folder / "v.cvol", v, spacing=(0.5, 1.0, 2.0))
        return folder / "v.cvol", {}
    if kind == "CVOL":
        return write_feature_cvol(folder / "f.cvol", [("density", v, 1)]), {}
    if kind == "vti":
        write_vti(folder / "v.vti", v, spacing=(0.5, 1.0, 2.0))
        return folder / "v.vti", {}
    if kind == "vti_vtk":  # VTK's own writer: appended raw data, LZ4 blocks
        vtk = pytest.importorskip("vtk")
        from vtk.util.numpy_support import numpy_to_vtk

        image = vtk.vtkImageData()
        image.SetDimensions(SHAPE[2], SHAPE[1], SHAPE[0])
        array = numpy_to_vtk(v.ravel(), deep=True)
        array.SetName("v")
        image.GetPointData().SetScalars(array)
        writer = vtk.vtkXMLImageDataWriter()
        writer.SetFileName(str(folder / "k.vti"))
        writer.SetInputData(image)
        writer.SetDataModeToAppended()
        writer.SetEncodeAppendedData(False)
        writer.SetCompressorTypeToLZ4()
        writer.SetHeaderTypeToUInt64()
        writer.SetBlockSize(512)
        assert writer.Write() == 1
        return folder / "k.vti", {}
    raise ValueError(kind)


def write_feature_cvol(path, features, num_features=None, world=(1.0, 1.0, 1.0)):
    """An uncompressed `CVOL` file; `num_features` overrides the count in the header."""
    out = b"CVOL" + struct.pack("<i3fii", 1, *world, len(features) if num_features is None else num_features, 0)
    out += bytes(4)
    for name, array, channels in features:
        nz, ny, nx = array.shape[:3]
        out += struct.pack("<i", len(name)) + name.encode() + struct.pack("<3Q2i", nx, ny, nz, channels, 2)
        out += np.ascontiguousarray(array, "<f4").tobytes()
    path.write_bytes(out)
    return path


def check_reader(path, **kwargs) -> None:
    """Read `path` eagerly and lazily (every voxel): a volume or a one-line InputError naming it."""
    for reader in (read_volume, open_volume_lazily):
        try:
            volume = reader(path, **kwargs)
            np.asarray(volume.values[:, :, :])  # lazy HDF5 reads happen here
        except InputError as exc:
            message = str(exc)
            assert message.startswith(f"{path}: ") and "\n" not in message, message


KINDS = ["npy", "raw", "h5", "h5gz", "cvol", "CVOL", "vti", "vti_vtk"]


def offsets(size: int, rng) -> list[int]:
    """Every byte of the first 96 (headers), then a sample of the rest."""
    head = list(range(0, min(size, 96), 3))
    return sorted(set(head + [int(o) for o in rng.integers(96, size, 16)] + [size - 1])) if size > 96 else head


@pytest.mark.parametrize("kind", KINDS)
def test_truncations_and_byte_flips(tmp_path, kind):
    good, kwargs = make_valid(tmp_path, kind)
    data = good.read_bytes()
    np.testing.assert_allclose(read_volume(good, **kwargs).values, values(), rtol=1e-6)
    rng = np.random.default_rng(len(data))
    bad = good.with_name("bad" + good.suffix if kind != "raw" else "bad_8x7x6_float32.raw")
    for offset in offsets(len(data), rng):
        bad.write_bytes(data[:offset])
        check_reader(bad, **kwargs)
        flipped = bytearray(data)
        flipped[offset] ^= 0xFF
        bad.write_bytes(bytes(flipped))
        check_reader(bad, **kwargs)


def crafted(folder):
    """(file name, bytes, expected message) of hand-made headers that once crashed the readers."""
    v = values()
    npy = (folder / "n.npy")
    np.save(npy, v)
    npy_bytes = npy.read_bytes()
    header_end = npy_bytes.index(b"}")
    huge_npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(huge_npy, {"descr": "<f4", "fortran_order": False,
                                                    "shape": (99999, 99999, 9999)})
    write_cvol(folder / "c.cvol", v)
    legacy = (folder / "c.cvol").read_bytes()
    huge_legacy = bytes(legacy[:4]) + struct.pack("<3Q", 2 ** 40, 2 ** 40, 2 ** 40) + bytes(legacy[28:])
    vti_text = (folder / "t.vti")
    write_vti(vti_text, v, spacing=(1, 1, 1))
    vti = vti_text.read_bytes()
    whole = f'WholeExtent="0 {SHAPE[2] - 1} 0 {SHAPE[1] - 1} 0 {SHAPE[0] - 1}"'.encode()
    piece = f'Extent="0 {SHAPE[2] - 1} 0 {SHAPE[1] - 1} 0 {SHAPE[0] - 1}"'.encode()
    assert whole in vti and piece in vti and SPACING in vti, vti[:400]
    empty_binary = (b'<?xml version="1.0"?><VTKFile type="ImageData" version="0.1" byte_order="LittleEndian">'
                    b'<ImageData WholeExtent="0 1 0 1 0 1" Origin="0 0 0" Spacing="1 1 1"><Piece Extent="0 1 0 1 0 1">'
                    b'<PointData><DataArray type="Float32" Name="v" format="binary"></DataArray></PointData>'
                    b'</Piece></ImageData></VTKFile>')
    lz4_vti, _ = make_valid(folder, "vti_vtk")
    lz4 = lz4_vti.read_bytes()
    start = lz4.index(b"_", lz4.index(b"<AppendedData")) + 1
    big = 2000 ** 3 * 4  # one block claimed to decode to 32 GB
    huge_block = lz4[:start] + struct.pack("<3Q", 1, big, big) + lz4[start + 24:]
    for tag in (b"WholeExtent=", b"Extent="):
        huge_block = huge_block.replace(tag + f'"0 {SHAPE[2] - 1} 0 {SHAPE[1] - 1} 0 {SHAPE[0] - 1}"'.encode(),
                                        tag + b'"0 1999 0 1999 0 1999"')
    cases = [
        ("huge_lz4_block.vti", huge_block, "corrupt lz4 block"),
        ("cut_header.npy", npy_bytes[:header_end - 3], "not a readable .npy"),
        ("huge_shape.npy", huge_npy.getvalue() + v.tobytes(), "truncated"),
        ("huge_dims.cvol", huge_legacy, "truncated"),
        ("zero_spacing.cvol", bytes(legacy[:28]) + struct.pack("<3d", 0.0, 1.0, 1.0) + bytes(legacy[52:]), "spacing"),
        ("neg_channels.cvol", None, "corrupt header of feature 'density'"),
        ("billion_features.cvol", None, "truncated: 1000000000 feature headers"),
        ("two_claimed.cvol", None, "truncated: feature header"),
        ("extent4.vti", vti.replace(piece, b'Extent="0 7 0 6"'), "Extent="),
        ("extent_text.vti", vti.replace(piece, b'Extent="0 7 0 six 0 5"'), "Extent="),
        ("spacing_text.vti", vti.replace(SPACING, b'Spacing="1 one 1"'), "Spacing="),
        ("spacing_zero.vti", vti.replace(SPACING, b'Spacing="1 0 1"'), "spacing"),
        ("spacing_neg.vti", vti.replace(SPACING, b'Spacing="1 -1 1"'), "spacing"),
        ("spacing_nan.vti", vti.replace(SPACING, b'Spacing="1 nan 1"'), "spacing"),
        ("empty_binary.vti", empty_binary, "cannot decode|truncated"),
        ("rotated.vti", vti.replace(b"<ImageData ", b'<ImageData Direction="0 1 0 -1 0 0 0 0 1" '), "Direction"),
    ]
    out = []
    for name, payload, message in cases:
        path = folder / name
        if payload is None:
            one = [("density", v, 1)]
            if name == "neg_channels.cvol":
                write_feature_cvol(path, one)
                raw = bytearray(path.read_bytes())
                struct.pack_into("<i", raw, 32 + 4 + 7 + 24, -3)
                path.write_bytes(bytes(raw))
            else:
                write_feature_cvol(path, one, num_features=10 ** 9 if name.startswith("billion") else 2)
        else:
            path.write_bytes(payload)
        out.append((path, message))
    return out


def test_crafted_headers(tmp_path):
    for path, message in crafted(tmp_path):
        for reader in (read_volume, open_volume_lazily):
            with pytest.raises(InputError, match=message) as info:
                reader(path)
            assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def training_argv(tmp_path, volume, expname="hostile") -> list:
    config = tmp_path / f"{expname}.txt"
    opts = {"data": volume, "basedir": tmp_path / "exp", "expname": expname, "features_per_layer": 8,
            "n_layers": 2, "max_pass": 1, "batch_size": 8, "sample_size": 8, "checkpoint_every": 0,
            "tracking": "none"}
    config.write_text("".join(f"{k} = {v}\n" for k, v in opts.items()))
    return ["--config", str(config)]


def test_training_entry_script_reports_one_line(tmp_path, capsys):
    """Through config.cli.run_cli, exactly what `python NeurcompTraining.py` runs (in-process: fast)."""
    from neurcomp.config.cli import run_cli
    from NeurcompTraining import main

    cases = crafted(tmp_path)
    for kind in ("npy", "h5", "cvol", "vti_vtk"):
        good, _ = make_valid(tmp_path, kind)
        data = good.read_bytes()
        cut = good.with_name("cut_" + good.name)
        cut.write_bytes(data[: len(data) * 2 // 3])
        cases.append((cut, ""))
    cut_raw = tmp_path / "cut_8x7x6_float32.raw"
    cut_raw.write_bytes(bytes(100))
    cases.append((cut_raw, "truncated"))
    capsys.readouterr()
    for path, message in cases:
        code = run_cli(main, training_argv(tmp_path, path))
        err = capsys.readouterr().err.strip()
        assert code != 0 and err.startswith(f"error: {path}: ") and "\n" not in err, (path, err)
        assert "Traceback" not in err
        assert not (tmp_path / "exp").exists(), path  # nothing written


def test_training_entry_script_as_a_subprocess(tmp_path):
    from conftest import run_script

    path = tmp_path / "cut.npy"
    np.save(path, values())
    path.write_bytes(path.read_bytes()[:40])
    proc = run_script("NeurcompTraining.py", *training_argv(tmp_path, path), timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith(f"error: {path}: ")
    assert not (tmp_path / "exp").exists()


# -- issue 25: numeric options at their extremes, readers, the API's arrays ------------------------
def numeric_options():
    """(option name, type) of every int or float option of every section of config/schema.py."""
    from neurcomp.config.fields import options_of
    from neurcomp.config.options import sections

    found = {}
    for cls, _ in sections():
        for _, opt in options_of(cls):
            if opt.type in (int, float) and not opt.flag:
                found[opt.name] = opt
    return sorted(found.items())


EXTREMES = {int: ["99999999999999999999", "-99999999999999999999", str(2 ** 63), str(2 ** 31)],
            float: ["1e-320", "-1e-320", "1e308", "-1e308", "1e-45", "4e38"]}


@pytest.mark.parametrize("name, opt", numeric_options(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_numeric_option_refuses_its_extremes_in_one_line(name, opt):
    """Values that parse as numbers but overflow a C int or float32 downstream (a seed unpacked to
    a long long, 1e-320 underflowing to 0, 1e308 to inf) are refused where they are read."""
    from neurcomp.config.errors import ConfigError
    from neurcomp.config.options import parse_config

    nargs = {"+": 1, None: 1}.get(opt.nargs, opt.nargs)
    for value in EXTREMES[opt.type]:
        # --name=value: argparse would read a separate "-1e308" as an option
        args = [f"--{name}={value}"] if nargs == 1 else [f"--{name}", "1", "1", f"{value}"]
        with pytest.raises(ConfigError) as info:
            parse_config(["--data", "x.npy", *args])
        message = str(info.value)
        assert message.startswith(f"command line: {name} = ") and "\n" not in message, message


@pytest.mark.parametrize("args, match", [
    (["--n_layers", "99999999999999999999"], "n_layers"),  # item 7: OverflowError in validation
    (["--n_layers", "5000"], r"n_layers = 5000 is invalid: must be in \[1, 1024\]"),
    (["--seed", "99999999999999999999"], "seed"),  # item 8: Overflow when unpacking long long
    (["--seed", "-1"], r"seed = -1 is invalid"),  # numpy's generators refuse negative seeds
    (["--compression_ratio", "1e-320", "--features_per_layer", "0"], "compression_ratio"),  # item 9
    (["--compression_ratio", "1e-30", "--features_per_layer", "0"], "compression_ratio 1e-30 is too low"),  # derived: 1e35 parameters
    (["--pass_decay", "1e-320"], "pass_decay"),  # item 10: inf decays after training started
    (["--omega_0", "1e-320"], "omega_0"),  # item 1, training side: the sine's init bound became inf
    (["--omega_0", "1e308"], "omega_0"),  # item 2, training side
])
def test_overflowing_options_end_in_one_line_before_anything_is_written(tmp_path, capsys, args, match):
    from neurcomp.config.cli import run_cli
    from NeurcompTraining import main

    path = tmp_path / "v.npy"
    np.save(path, values())
    capsys.readouterr()
    code = run_cli(main, training_argv(tmp_path, path) + args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert re.search(match, err), err
    # a ratio's width is sized once the volume is read, after the (empty) experiment folder is made
    assert not [p for p in (tmp_path / "exp").rglob("*") if p.is_file()]


def test_overflowing_options_through_the_shell(tmp_path):
    from conftest import run_script

    path = tmp_path / "v.npy"
    np.save(path, values())
    proc = run_script("NeurcompTraining.py", *training_argv(tmp_path, path), "--seed", "99999999999999999999",
                      timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "seed = 99999999999999999999 is invalid" in proc.stderr


def test_a_huge_option_value_is_cut_in_the_message():
    from neurcomp.config.errors import ConfigError
    from neurcomp.config.options import parse_config

    with pytest.raises(ConfigError) as info:
        parse_config(["--data", "x.npy", "--tracking", "x" * 10_000_000])
    assert len(str(info.value)) < 300 and str(info.value).count("10000002 characters") == 2


def test_npy_with_a_negative_shape_is_refused(tmp_path):
    path = tmp_path / "neg.npy"
    np.save(path, np.zeros((4, 16, 16), np.float32))
    path.write_bytes(path.read_bytes().replace(b"(4, 16, 16)", b"(-1, 16, 16)"))
    with pytest.raises(InputError, match=r"negative shape \(-1, 16, 16\)"):
        read_volume(path)


def test_int64_values_whose_range_vanishes_in_float32_are_named(tmp_path):
    path = tmp_path / "big.npy"
    np.save(path, (np.arange(64).reshape(4, 4, 4) + 2 ** 62).astype(np.int64))
    with pytest.raises(InputError, match=r"span only 63 around 4.6\d*e\+18, below float32's step"):
        read_volume(path)
    # equal as float64 too (2^62 + 63 rounds to 2^62): still not called constant
    np.save(path, np.array([2 ** 62, 2 ** 62 + 1] * 32, np.int64).reshape(4, 4, 4))
    with pytest.raises(InputError, match="span only 1 around"):
        read_volume(path)


def test_fifos_folders_and_link_loops_are_named_as_such(tmp_path):
    import os

    fifo, loop = tmp_path / "f.npy", tmp_path / "loop.npy"
    os.mkfifo(fifo)  # reading one would block forever
    loop.symlink_to(loop)
    for path, match in ((fifo, "not a regular file"), (loop, "symbolic links"), (tmp_path, "is a folder"),
                        (tmp_path / "none.npy", "file not found")):
        with pytest.raises(InputError, match=match):
            read_volume(path)


@pytest.mark.parametrize("array, match", [
    (np.zeros((0, 12, 12), np.float32), "every axis needs at least 2 voxels"),  # was ZeroDivisionError
    (np.full((4, 4, 4), "a"), "not real numbers"),  # was ValueError
    (np.ones((4, 4, 4), complex), "not real numbers"),
    (np.ones((4, 4, 4), bool), "not real numbers"),
    (np.empty((4, 4, 4), object), "not real numbers"),
    ([[[1.0, 2.0], [3.0]]], "not a rectangular array"),
    (np.ones((4, 4)), "expected a 3D volume"),
    (np.full((4, 4, 4), np.nan), "must be finite"),
    (np.full((4, 4, 4), 1e300), "beyond the float32 range"),
    (np.ones((4, 4, 4)), "constant volume"),
])
def test_api_compress_refuses_bad_arrays_with_input_error(tmp_path, array, match):
    from neurcomp.compressors import api

    with pytest.raises(InputError, match=match) as info:
        api.compress(array, ratio=50, work_dir=tmp_path)
    assert str(info.value).startswith("compress: ") and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_api_compress_refuses_a_bad_spacing():
    from neurcomp.compressors import api

    for spacing in ((1, 0, 1), (1, 1), (1, float("nan"), 1), "abc"):
        with pytest.raises(InputError, match="spacing must be three positive finite numbers"):
            api.compress(np.random.default_rng(0).random((4, 4, 4)), spacing=spacing, ratio=50)


def test_a_bound_without_a_target_writes_the_bounded_file(tmp_path, capsys):
    """A bound is never silently ignored: with a fixed width (no size search) the run still writes
    the file that keeps it."""
    import json

    from neurcomp.config.cli import run_cli
    from neurcomp.compressors import api
    from NeurcompTraining import main

    path = tmp_path / "v.npy"
    np.save(path, values())
    capsys.readouterr()
    assert run_cli(main, training_argv(tmp_path, path) + ["--max_abs_error", "0.01"]) == 0
    assert "max_abs_error 0.01 kept" in capsys.readouterr().out
    info = json.loads((tmp_path / "exp" / "hostile" / "info.json").read_text())
    assert "bound_search" not in info  # features_per_layer sizes the network
    decoded = api.decompress(tmp_path / "exp" / "hostile" / info["file"])
    assert np.abs(decoded.astype(np.float64) - values()).max() <= 0.01
