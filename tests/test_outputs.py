"""What a training run leaves for the user: .vti volumes that VTK reads exactly (source dtype, zlib,
the source array name, an error volume), info.txt in the original's format, slices.png in
physical proportions, and progress while the whole volume is evaluated."""

import json

import h5py
import numpy as np
import pytest
import torch

from neurcomp.config.options import parse_config
from neurcomp.data.readers import read_volume
from neurcomp.data.volume import Volume, VolumeInfo
from neurcomp.data.writers import write_vti
from neurcomp.model.inference import predict_volume
from neurcomp.training import session as session_module
from neurcomp.training.outputs import info_text, slices_figure, write_volumes
from neurcomp.training.run import train

SPACING = (0.5, 1.0, 2.0)  # (x, y, z)
ORIGIN = (1.0, -2.0, 3.0)


def read_with_vtk(path) -> tuple[dict, tuple, tuple]:
    """Every point data array (name -> (Z, Y, X) array in the stored dtype), spacing and origin, as
    VTK's own reader sees them."""
    vtk = pytest.importorskip("vtk")
    from vtk.util.numpy_support import vtk_to_numpy

    reader = vtk.vtkXMLImageDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    nx, ny, nz = image.GetDimensions()
    data = image.GetPointData()
    arrays = {data.GetArrayName(i): vtk_to_numpy(data.GetArray(i)).reshape(nz, ny, nx)
              for i in range(data.GetNumberOfArrays())}
    assert arrays, f"VTK read no arrays from {path}"
    return arrays, image.GetSpacing(), image.GetOrigin()


def dict_from_file(path) -> dict:
    """The original's analysis helper as ../shared/original/README.md describes it: each line with
    its spaces removed is split at '='; the value is an int, else a float, else (with a comma) a
    list of ints or floats, else the string."""
    result = {}
    for line in path.read_text().splitlines():
        key, value = line.replace(" ", "").split("=")[0:2]
        result[key] = _parse_value(value)
    return result


def _parse_value(text: str):
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            continue
    if "," not in text:
        return text
    parts = text.strip("[]").split(",")
    try:
        return [int(p) for p in parts]
    except ValueError:
        return [float(p) for p in parts]  # what the original did: a non-number here is its crash


def source_volume(dtype, shape=(6, 7, 9)) -> Volume:
    """A volume read from a `dtype` file: float32 values holding the stored ones exactly."""
    rng = np.random.default_rng(3)
    stored = (rng.random(shape) * 250).astype(dtype)
    stored.flat[0], stored.flat[-1] = 0, 250  # the range's ends, where a prediction can overshoot
    return Volume(values=stored.astype(np.float32), spacing=SPACING, origin=ORIGIN, source_dtype=np.dtype(dtype).name,
                  name="density")


# --- .vti --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("compression", ["none", "zlib"])
def test_vti_outputs_read_back_exactly_in_vtk(tmp_path, dtype, compression):
    volume = source_volume(dtype)
    # a prediction that overshoots the uint8 range at both ends and is off the integers
    prediction = volume.values + np.linspace(-3.3, 7.7, volume.num_voxels, dtype=np.float32).reshape(volume.shape)
    paths = write_volumes(tmp_path, volume, prediction, dtype="source", compression=compression)
    assert [p.name for p in paths] == ["ground_truth.vti", "prediction.vti", "error.vti"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["error.vti", "ground_truth.vti", "prediction.vti"]

    files = {}
    for path in paths:
        arrays, spacing, origin = read_with_vtk(path)
        assert spacing == SPACING and origin == ORIGIN
        files[path.name] = arrays
        assert (b'compressor="vtkZLibDataCompressor"' in path.read_bytes()[:400]) == (compression == "zlib")
    truth, pred = files["ground_truth.vti"]["density"], files["prediction.vti"]["density"]
    error = files["error.vti"]["error"]
    assert truth.dtype == pred.dtype == np.dtype(dtype) and error.dtype == np.float32
    np.testing.assert_array_equal(truth, volume.values.astype(dtype))
    if dtype == "uint8":  # rounded to the nearest integer and clipped to 0..255
        np.testing.assert_array_equal(pred, np.clip(np.rint(prediction), 0, 255).astype(np.uint8))
        assert pred.min() == 0 and pred.max() == 255
    else:
        np.testing.assert_array_equal(pred, prediction)
    np.testing.assert_array_equal(error, pred.astype(np.float32) - truth.astype(np.float32))
    # our own reader agrees, and keeps the array name
    again = read_volume(paths[1])
    assert again.name == "density" and again.source_dtype == dtype
    np.testing.assert_array_equal(again.values, pred.astype(np.float32))


def test_vti_float32_keeps_the_networks_output_and_zlib_shrinks_an_integer_volume(tmp_path):
    z, y, x = np.indices((32, 32, 32))
    smooth = (x + 2 * y + 3 * z).astype(np.uint8)  # like a real volume, unlike noise: compressible
    volume = Volume(values=smooth.astype(np.float32), spacing=SPACING, source_dtype="uint8", name="density")
    prediction = volume.values + np.float32(0.25)
    write_volumes(tmp_path / "f", volume, prediction, dtype="float32", compression="zlib")
    arrays, _, _ = read_with_vtk(tmp_path / "f" / "prediction.vti")
    assert arrays["density"].dtype == np.float32
    np.testing.assert_array_equal(arrays["density"], prediction)
    np.testing.assert_array_equal(read_with_vtk(tmp_path / "f" / "error.vti")[0]["error"], prediction - volume.values)
    write_volumes(tmp_path / "plain", volume, prediction, dtype="float32", compression="none")
    write_volumes(tmp_path / "small", volume, prediction, dtype="source", compression="zlib")
    size = {d: (tmp_path / d / "ground_truth.vti").stat().st_size for d in ("plain", "f", "small")}
    assert size["plain"] > 4 * 32 ** 3 and size["f"] < size["plain"] and size["small"] < 32 ** 3


def test_zlib_blocks_of_every_size_read_back_in_vtk(tmp_path):
    """One block, an exact multiple of the 1 MiB block and a partial last one."""
    for shape in ((2, 3, 4), (64, 64, 64), (65, 64, 64)):
        values = np.random.default_rng(0).random(shape, dtype=np.float32)
        write_vti(tmp_path / "z.vti", values, (1, 1, 1), compression="zlib")
        np.testing.assert_array_equal(read_with_vtk(tmp_path / "z.vti")[0]["value"], values)
        np.testing.assert_array_equal(read_volume(tmp_path / "z.vti").values, values)


def test_the_source_array_name_is_kept(tmp_path):
    values = source_volume("float32").values
    write_vti(tmp_path / "in.vti", values, SPACING, name="rho", extra_arrays={"other": values * 2})
    with h5py.File(tmp_path / "in.h5", "w") as file:
        file.create_dataset("fields/pressure", data=values)
    np.save(tmp_path / "in.npy", values)
    assert read_volume(tmp_path / "in.vti").name == "rho"
    assert read_volume(tmp_path / "in.vti", data_key="other").name == "other"
    assert read_volume(tmp_path / "in.h5").name == "pressure"
    unnamed = read_volume(tmp_path / "in.npy")
    assert unnamed.name == ""
    write_volumes(tmp_path / "out", unnamed, unnamed.values)
    assert set(read_with_vtk(tmp_path / "out" / "prediction.vti")[0]) == {"value"}


def test_vti_names_are_escaped(tmp_path):
    write_vti(tmp_path / "q.vti", source_volume("float32").values, SPACING, name='a "b" <c> & d')
    assert set(read_with_vtk(tmp_path / "q.vti")[0]) == {'a "b" <c> & d'}


# --- info.txt ----------------------------------------------------------------------------------


def test_info_txt_reads_in_the_originals_helper(tmp_path):
    info = {"volume_size": [16, 14, 12], "psnr": 41.25, "num_parameters": 1234, "residual": True, "lr": None,
            "spacing": [0.5, 1.0, 2.0], "layer": [8], "empty": [], "device": "cuda:0 (NVIDIA H200, 141 GB)",
            "data": "/data/a=b, c.npy", "float32_matmul": "tf32 (TORCH_ALLOW_TF32_CUBLAS_OVERRIDE)",
            "versions": {"python": "3.11.7", "torch": "2.5.1"}, "kept_fraction_per_layer": {"block_1": 0.5},
            "pruning_layers": [{"name": "block_1", "kept": 6, "widths": [12, 6]}], "big": 3.0e-12}
    (tmp_path / "info.txt").write_text(info_text(info))
    assert "{" not in (tmp_path / "info.txt").read_text()
    d = dict_from_file(tmp_path / "info.txt")
    assert d["volume_size"] == [16, 14, 12] and d["psnr"] == 41.25 and d["num_parameters"] == 1234
    assert d["spacing"] == [0.5, 1.0, 2.0] and d["big"] == 3.0e-12
    assert d["residual"] == "True" and d["lr"] == "None" and d["layer"] == "[8]" and d["empty"] == "[]"
    assert d["versions_python"] == "3.11.7" and d["kept_fraction_per_layer_block_1"] == 0.5
    assert d["pruning_layers_0_name"] == "block_1" and d["pruning_layers_0_widths"] == [12, 6]
    assert d["device"] == "cuda:0(NVIDIAH200;141GB)" and d["data"] == "/data/a:b;c.npy"


# --- slices.png --------------------------------------------------------------------------------


def test_slices_follow_the_spacing():
    import matplotlib.pyplot as plt

    nz, ny, nx = 4, 6, 8
    values = np.arange(nz * ny * nx, dtype=np.float32).reshape(nz, ny, nx)
    sx, sy, sz = 1.0, 2.0, 4.0
    fig = slices_figure(values, values + 1, spacing=(sx, sy, sz))
    try:
        fig.canvas.draw()
        expected = [(nx * sx, ny * sy), (nx * sx, nz * sz), (ny * sy, nz * sz)]  # XY, XZ, YZ
        for col, (width, height) in enumerate(expected):
            for row in range(3):
                ax = [a for a in fig.axes if a.images][row * 3 + col]
                assert ax.images[0].get_extent() == [0.0, width, 0.0, height]
                assert ax.get_aspect() == 1.0
                box = ax.get_window_extent()
                assert box.height / box.width == pytest.approx(height / width, rel=0.03)
    finally:
        plt.close(fig)


# --- progress of the full-volume evaluation ------------------------------------------------------


class Counter:
    def __init__(self, total):
        self.total, self.n, self.closed = total, 0, False

    def update(self, n=1):
        self.n += n

    def close(self):
        self.closed = True


def test_predict_volume_reports_every_chunk():
    model = torch.nn.Linear(3, 1)
    bars = []
    predict_volume(model, (5, 6, 7), chunk_points=32, progress=lambda total: bars.append(Counter(total)) or bars[-1])
    (bar,) = bars
    assert bar.total == 7 and bar.n == 7 and bar.closed  # ceil(210 / 32) chunks


def test_evaluation_progress_is_logged_when_stderr_is_not_a_terminal(capsys):
    volume = source_volume("float32")
    model = torch.nn.Linear(3, 1)
    info = VolumeInfo.from_volume(volume)
    session_module.evaluate(model, volume, info, progress=True)
    err = capsys.readouterr().err
    assert "evaluation: step 1/1" in err and "\r" not in err  # log lines, not a bar
    session_module.evaluate(model, volume, info, progress=False)
    assert capsys.readouterr().err == ""


# --- a training run end to end -------------------------------------------------------------------


def tiny_uint8_vti(tmp_path):
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (8, 10, 12)), indexing="ij")
    values = np.rint((np.sin(2 * x) * np.cos(3 * y) + z ** 2 + 1) * 60).astype(np.uint8)
    write_vti(tmp_path / "tiny.vti", values, SPACING, ORIGIN, name="density")
    return tmp_path / "tiny.vti", values


def run_tiny(tmp_path, data, *extra):
    cfg = parse_config(["--data", str(data), "--basedir", str(tmp_path / "exp"), "--expname", "tiny",
                        "--features_per_layer", "8", "--n_layers", "2", "--max_pass", "2", "--batch_size", "64",
                        "--sample_size", "16", "--lr", "1e-3", "--tracking", "none", *extra])
    return train(cfg), tmp_path / "exp" / "tiny"


def test_training_writes_the_outputs_as_configured(tmp_path, capsys):
    data, values = tiny_uint8_vti(tmp_path)
    result, out = run_tiny(tmp_path, data)
    assert "evaluation: step" in capsys.readouterr().err  # stderr is not a terminal here
    files = {name: read_with_vtk(out / f"{name}.vti") for name in ("ground_truth", "prediction", "error")}
    for arrays, spacing, origin in files.values():
        assert spacing == SPACING and origin == ORIGIN
    truth, pred = files["ground_truth"][0]["density"], files["prediction"][0]["density"]
    assert truth.dtype == pred.dtype == np.uint8  # the defaults: source dtype, zlib
    np.testing.assert_array_equal(truth, values)
    np.testing.assert_array_equal(files["error"][0]["error"], pred.astype(np.float32) - values)
    assert b"vtkZLibDataCompressor" in (out / "prediction.vti").read_bytes()[:400]

    info = json.loads((out / "info.json").read_text())
    d = dict_from_file(out / "info.txt")
    assert d["psnr"] == info["psnr"] and d["volume_size"] == [12, 10, 8] == info["volume_size"]
    assert d["network_layer_sizes"] == info["network_layer_sizes"] and d["num_parameters"] == result["num_parameters"]
    assert d["volume_dtype"] == "uint8" and d["versions_torch"] == info["versions"]["torch"].replace(" ", "")
    config = dict_from_file(out / "config.txt")  # config.txt too
    assert config["expname"] == "tiny" and config["n_layers"] == 2 and config["vti_dtype"] == "source"
    assert config["vti_compression"] == "zlib"

    # float32 and no compression, quietly: the network's own output, and nothing on stderr
    run_tiny(tmp_path, data, "--vti_dtype", "float32", "--vti_compression", "none", "--quiet", "true")
    assert capsys.readouterr().err == ""
    pred32 = read_with_vtk(out / "prediction.vti")[0]["density"]
    assert pred32.dtype == np.float32 and b"compressor" not in (out / "prediction.vti").read_bytes()[:400]
    np.testing.assert_array_equal(read_with_vtk(out / "error.vti")[0]["error"], pred32 - values.astype(np.float32))
