"""Readers on the real volumes in ../shared/datasets and on synthetic files; writers round trips."""

import hashlib
import struct
from pathlib import Path

import h5py
import lz4.block
import numpy as np
import pytest

from neurcomp.config.errors import InputError
from neurcomp.data.readers import open_volume_lazily, read_volume
from neurcomp.data.volume import Volume, denormalize, normalize
from neurcomp.data.writers import write_cvol, write_npy, write_raw, write_volume, write_vti

DATASETS = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"


def dataset(name: str) -> Path:
    path = DATASETS / name
    if not path.is_file():
        pytest.skip(f"real volume {name} not found in ../shared/datasets (shared data folder absent)")
    return path


def vtk_read_point_array(path, name=None) -> np.ndarray:
    """Point data read by VTK's own reader, as a (Z, Y, X) array."""
    vtk = pytest.importorskip("vtk")
    from vtk.util.numpy_support import vtk_to_numpy

    reader = vtk.vtkXMLImageDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    data = image.GetPointData()
    array = data.GetArray(name) if name else data.GetScalars()
    nx, ny, nz = image.GetDimensions()
    return vtk_to_numpy(array).reshape(nz, ny, nx)


# --- real volumes (shapes and ranges from ../shared/datasets/README.md) -----------------------


def test_richtmyer_meshkov_cvol_matches_worked_example():
    volume = read_volume(dataset("RichtmyerMeshkov/ppm-t0020.cvol"))
    assert volume.shape == (256, 256, 256)
    assert volume.source_dtype == "uint8"
    assert volume.spacing == (1 / 256, 1 / 256, 1 / 256)  # voxelSize; world size 1x1x1
    raw = volume.values.astype(np.uint8).tobytes()
    assert hashlib.sha256(raw).hexdigest() == "b23d94438eb7816febc6368af8501c3b4a5bf6c2b6eea3629c0aff2306b564b5"
    assert (volume.vmin, volume.vmax) == (3.0, 230.0)
    assert float(volume.values.mean(dtype=np.float64)) == pytest.approx(55.895, abs=5e-4)


@pytest.mark.parametrize(
    "name, shape, dtype, vmin, vmax",
    [
        ("hydrogen_atom_128x128x128_uint8.raw", (128, 128, 128), "uint8", 0, 250),
        ("nucleon_41x41x41_uint8.raw", (41, 41, 41), "uint8", 0, 249),
        ("bucky_32x32x32_uint8.raw", (32, 32, 32), "uint8", 0, 255),
        # README rounds the walnut's maximum to 22530; the stored maximum is 22526.
        ("walnut_128x96x114_uint16.raw", (114, 96, 128), "uint16", 0, 22526),
        ("chi_s3d_50x50x50_float32.raw", (50, 50, 50), "float32", 44.66987, 1.0353204e8),
    ],
)
def test_raw_volumes(name, shape, dtype, vmin, vmax):
    path = dataset(name)
    volume = read_volume(path)
    assert volume.shape == shape and volume.source_dtype == dtype
    assert volume.values.dtype == np.float32 and volume.values.flags.c_contiguous
    assert volume.vmin == pytest.approx(vmin, rel=1e-6) and volume.vmax == pytest.approx(vmax, rel=1e-6)
    # X fastest on disk: the name says X x Y x Z, numpy sees (Z, Y, X).
    np.testing.assert_array_equal(volume.values, np.fromfile(path, dtype="<" + np.dtype(dtype).str[1:]).reshape(shape))


def test_neghip_npy():
    volume = read_volume(dataset("neghip_vtk_66x66x66_uint8.npy"))
    assert volume.shape == (66, 66, 66) and volume.source_dtype == "uint8"
    assert (volume.vmin, volume.vmax) == (0.0, 255.0)
    assert volume.values[0].max() == 0 and volume.values[:, :, -1].max() == 0  # the zero border


def test_viscous_fingers_npy():
    volume = read_volume(dataset("viscous_fingers_run01_t050_64x64x64_float32.npy"))
    assert volume.shape == (64, 64, 64) and volume.source_dtype == "float32"
    assert volume.vmin == 0.0 and volume.vmax == pytest.approx(107.9, abs=0.05)


def test_viscous_fingers_vti_matches_vtk_reader():
    path = dataset("viscous_fingers_run01_t001_64x64x64.vti")
    volume = read_volume(path)
    assert volume.shape == (64, 64, 64) and volume.source_dtype == "float32"
    assert volume.spacing == (1.0, 1.0, 1.0) and volume.origin == (0.0, 0.0, 0.0)
    assert volume.vmin == 0.0 and volume.vmax == pytest.approx(76.763237)
    np.testing.assert_array_equal(volume.values, vtk_read_point_array(path))


def test_isabel_hdf5_with_and_without_key():
    path = dataset("isabel_velmag_t02_125x125x25.h5")
    found = read_volume(path)
    named = read_volume(path, data_key="velocity_magnitude")
    assert found.shape == (25, 125, 125) and found.source_dtype == "float32"
    assert found.vmin == 0.0 and found.vmax == pytest.approx(68.3, abs=0.1)
    np.testing.assert_array_equal(found.values, named.values)


# --- synthetic .raw / .npy / .h5 ---------------------------------------------------------------


def test_raw_shape_and_dtype_override_the_name(tmp_path):
    values = np.arange(2 * 3 * 4, dtype="<i2").reshape(4, 3, 2) - 7  # (Z, Y, X)
    path = tmp_path / "scan_9x9x9_uint8.raw"  # the name is wrong on purpose
    values.tofile(path)
    volume = read_volume(path, raw_shape=(2, 3, 4), raw_dtype="int16")
    assert volume.source_dtype == "int16"
    np.testing.assert_array_equal(volume.values, values)


def test_npy_channel_and_hdf5_group_search(tmp_path):
    values = np.random.default_rng(1).random((3, 4, 5, 2))
    write_npy(tmp_path / "v.npy", values)
    volume = read_volume(tmp_path / "v.npy", channel=1)
    assert volume.source_dtype == "float64"
    np.testing.assert_array_equal(volume.values, values[..., 1].astype(np.float32))
    with h5py.File(tmp_path / "g.h5", "w") as file:
        file.create_dataset("meta/time", data=np.arange(3))
        file.create_dataset("fields/deep/rho", data=values[..., 0])
    np.testing.assert_array_equal(read_volume(tmp_path / "g.h5").values, values[..., 0].astype(np.float32))


# --- .cvol -------------------------------------------------------------------------------------


def _linked_lz4(raw: bytes, history: bytes = b"") -> bytes:
    """fV-SRN's chunk stream: 64 KiB chunks, each compressed against the previous 64 KiB of output."""
    out, stream = [], history + raw
    for start in range(len(history), len(stream), 65536):
        block = lz4.block.compress(stream[start : start + 65536], store_size=False, dict=stream[max(0, start - 65536) : start])
        out.append(struct.pack("<i", len(block)) + block)
    return b"".join(out)


def _cvol_new(features, world_size, compressed: bool) -> bytes:
    """A `CVOL` file; features = [(name, array (Z, Y, X[, C]))], one LZ4 stream across features."""
    types = {"uint8": 0, "uint16": 1, "float32": 2}
    out = [b"CVOL" + struct.pack("<i3fii4x", 1, *world_size, len(features), int(compressed))]
    history = b""
    for name, array in features:
        z, y, x = array.shape[:3]
        channels = array.shape[3] if array.ndim == 4 else 1
        raw = np.ascontiguousarray(array).tobytes()
        out.append(struct.pack("<i", len(name)) + name.encode() + struct.pack("<3Q2i", x, y, z, channels, types[array.dtype.name]))
        out.append(_linked_lz4(raw, history[-65536:]) if compressed else raw)
        history += raw
    return b"".join(out)


@pytest.mark.parametrize("compressed", [True, False])
def test_cvol_new_layout_two_features(tmp_path, compressed):
    rng = np.random.default_rng(2)
    density = rng.integers(0, 256, (16, 32, 160), dtype=np.uint8)  # 80 KiB: two chunks
    velocity = rng.random((4, 5, 6, 3), dtype=np.float32)
    # "copy" repeats density's tail, so its LZ4 chunk only decodes with the previous feature as history.
    copy = density[-8:].copy()
    path = tmp_path / "multi.cvol"
    path.write_bytes(_cvol_new([("density", density), ("copy", copy), ("velocity", velocity)], (2.0, 1.0, 0.5), compressed))

    first = read_volume(path)
    assert first.values.flags.writeable
    assert first.source_dtype == "uint8" and first.spacing == (2 / 160, 1 / 32, 0.5 / 16)
    np.testing.assert_array_equal(first.values, density)
    np.testing.assert_array_equal(read_volume(path, data_key="copy").values, copy)
    vel = read_volume(path, data_key="velocity", channel=2)
    assert vel.values.flags.writeable and vel.values.flags.c_contiguous
    assert vel.spacing == pytest.approx((2 / 6, 1 / 5, 0.5 / 4))
    np.testing.assert_array_equal(vel.values, velocity[..., 2])
    if compressed:
        # Random data does not compress; "copy" costs almost nothing because it references history.
        assert path.stat().st_size < density.nbytes + velocity.nbytes + copy.nbytes // 10


def test_uncompressed_legacy_cvol(tmp_path):
    values = np.random.default_rng(3).random((3, 4, 5), dtype=np.float32)
    header = b"cvol" + struct.pack("<3Q3dIB", 5, 4, 3, 0.5, 0.25, 2.0, 2, 0)
    path = tmp_path / "plain.cvol"
    path.write_bytes(header + b"\0" * (64 - len(header)) + values.tobytes())
    volume = read_volume(path)
    assert volume.spacing == (0.5, 0.25, 2.0)
    np.testing.assert_array_equal(volume.values, values)


def test_write_cvol_round_trip_and_header(tmp_path):
    values = np.random.default_rng(4).integers(0, 65536, (20, 30, 70), dtype=np.uint16)  # > 64 KiB
    path = tmp_path / "out.cvol"
    write_cvol(path, values, spacing=(0.1, 0.2, 0.3))
    data = path.read_bytes()
    assert data[:4] == b"cvol" and struct.unpack_from("<3Q3dIB", data, 4) == (70, 30, 20, 0.1, 0.2, 0.3, 1, 1)
    volume = read_volume(path)
    assert volume.source_dtype == "uint16" and volume.spacing == (0.1, 0.2, 0.3)
    np.testing.assert_array_equal(volume.values, values)


# --- .vti --------------------------------------------------------------------------------------


def test_our_vti_writer_round_trips_through_vtk(tmp_path):
    values = np.random.default_rng(5).random((5, 4, 3), dtype=np.float32)  # (Z, Y, X)
    path = tmp_path / "out.vti"
    write_vti(path, values, spacing=(0.5, 2.0, 3.0), origin=(1.0, 2.0, 3.0), extra_arrays={"error": values * 2})
    assert [p.name for p in tmp_path.iterdir()] == ["out.vti"]  # no temporary left behind
    vtk = pytest.importorskip("vtk")
    reader = vtk.vtkXMLImageDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    assert image.GetDimensions() == (3, 4, 5) and image.GetSpacing() == (0.5, 2.0, 3.0)
    assert image.GetScalarComponentAsDouble(2, 1, 3, 0) == pytest.approx(float(values[3, 1, 2]))  # (x, y, z)
    np.testing.assert_array_equal(vtk_read_point_array(path, "value"), values)
    ours = read_volume(path)
    assert ours.spacing == (0.5, 2.0, 3.0) and ours.origin == (1.0, 2.0, 3.0)
    np.testing.assert_array_equal(ours.values, values)
    np.testing.assert_array_equal(read_volume(path, data_key="error").values, values * 2)


VTK_VARIANTS = [
    (mode, compressor, header64, encoded)
    for mode in ("ascii", "binary", "appended")
    for compressor in ("None", "ZLib", "LZ4", "LZMA")  # the compressors of ParaView's save dialog
    for header64 in (False, True)
    for encoded in ((False, True) if mode == "appended" else (True,))
    if mode != "ascii" or compressor in ("None", "ZLib")  # ascii is never compressed
]


@pytest.mark.parametrize("mode, compressor, header64, encoded", VTK_VARIANTS)
def test_vti_variants_written_by_vtk(tmp_path, mode, compressor, header64, encoded):
    vtk = pytest.importorskip("vtk")
    from vtk.util.numpy_support import numpy_to_vtk

    values = np.random.default_rng(6).random((5, 4, 3))
    image = vtk.vtkImageData()
    image.SetDimensions(3, 4, 5)
    image.SetSpacing(0.5, 2.0, 3.0)
    image.SetOrigin(-1.0, 0.0, 1.0)
    for name, data in (("first", values), ("active", values * 2)):
        array = numpy_to_vtk(data.ravel(), deep=True)
        array.SetName(name)
        image.GetPointData().AddArray(array)
    image.GetPointData().SetActiveScalars("active")
    writer = vtk.vtkXMLImageDataWriter()
    writer.SetFileName(str(tmp_path / "v.vti"))
    writer.SetInputData(image)
    {"ascii": writer.SetDataModeToAscii, "binary": writer.SetDataModeToBinary, "appended": writer.SetDataModeToAppended}[mode]()
    getattr(writer, f"SetCompressorTypeTo{compressor}")()
    writer.SetBlockSize(256)  # several compressed blocks, the last one short
    writer.SetHeaderTypeToUInt64() if header64 else writer.SetHeaderTypeToUInt32()
    writer.SetEncodeAppendedData(encoded)
    assert writer.Write() == 1
    if mode != "ascii" and compressor != "None":
        assert f"vtk{compressor}DataCompressor".lower() in (tmp_path / "v.vti").read_bytes()[:400].decode().lower()

    active = read_volume(tmp_path / "v.vti")
    assert active.source_dtype == "float64" and active.spacing == (0.5, 2.0, 3.0) and active.origin == (-1.0, 0.0, 1.0)
    np.testing.assert_array_equal(active.values, (values * 2).astype(np.float32))
    np.testing.assert_array_equal(read_volume(tmp_path / "v.vti", data_key="first").values, values.astype(np.float32))


def test_vti_big_endian_multicomponent(tmp_path):
    vtk = pytest.importorskip("vtk")
    from vtk.util.numpy_support import numpy_to_vtk

    values = np.random.default_rng(7).random((4, 3, 2, 3), dtype=np.float32)  # (Z, Y, X, C)
    image = vtk.vtkImageData()
    image.SetDimensions(2, 3, 4)
    array = numpy_to_vtk(values.reshape(-1, 3), deep=True)
    array.SetName("velocity")
    image.GetPointData().AddArray(array)
    writer = vtk.vtkXMLImageDataWriter()
    writer.SetFileName(str(tmp_path / "be.vti"))
    writer.SetInputData(image)
    writer.SetByteOrderToBigEndian()
    writer.Write()
    np.testing.assert_array_equal(read_volume(tmp_path / "be.vti", channel=1).values, values[..., 1])


def write_vtk_image(path, values, extent=None, direction=None, spacing=(0.5, 2.0, 3.0), origin=(-1.0, 0.0, 1.0)):
    vtk = pytest.importorskip("vtk")
    from vtk.util.numpy_support import numpy_to_vtk

    image = vtk.vtkImageData()
    nz, ny, nx = values.shape
    if extent is None:
        image.SetDimensions(nx, ny, nz)
    else:
        image.SetExtent(*extent)
    image.SetSpacing(*spacing)
    image.SetOrigin(*origin)
    if direction is not None:
        image.SetDirectionMatrix(*direction)
    array = numpy_to_vtk(values.ravel(), deep=True)
    array.SetName("v")
    image.GetPointData().SetScalars(array)
    writer = vtk.vtkXMLImageDataWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(image)
    assert writer.Write() == 1
    return image


def test_vti_extent_offset_moves_the_origin(tmp_path):
    """A cropped ParaView export (Extent starting at 10) stays where it was in world space."""
    values = np.random.default_rng(9).random((5, 4, 3), dtype=np.float32)
    image = write_vtk_image(tmp_path / "crop.vti", values, extent=(10, 12, 0, 3, 20, 24))
    volume = read_volume(tmp_path / "crop.vti")
    assert volume.origin == pytest.approx(image.GetPoint(0)) == (-1.0 + 10 * 0.5, 0.0, 1.0 + 20 * 3.0)
    np.testing.assert_array_equal(volume.values, values)
    np.testing.assert_array_equal(vtk_read_point_array(tmp_path / "crop.vti"), values)


def test_vti_rotated_direction_is_refused(tmp_path):
    values = np.random.default_rng(10).random((5, 4, 3), dtype=np.float32)
    write_vtk_image(tmp_path / "rot.vti", values, direction=(0, -1, 0, 1, 0, 0, 0, 0, 1))
    assert b"Direction=" in (tmp_path / "rot.vti").read_bytes()
    with pytest.raises(InputError, match="Direction .* rotates the grid"):
        read_volume(tmp_path / "rot.vti")
    write_vtk_image(tmp_path / "id.vti", values, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    np.testing.assert_array_equal(read_volume(tmp_path / "id.vti").values, values)


@pytest.mark.parametrize("spacing", [(0.0, 1.0, 1.0), (1.0, -2.0, 1.0), (1.0, 1.0, float("nan"))])
def test_bad_spacing_is_refused_at_read_time(tmp_path, spacing):
    values = np.random.default_rng(11).random((3, 4, 5), dtype=np.float32)
    write_vtk_image(tmp_path / "s.vti", values, spacing=spacing)
    with pytest.raises(InputError, match=r"s\.vti: spacing .* finite values > 0"):
        read_volume(tmp_path / "s.vti")
    write_cvol(tmp_path / "s.cvol", values, spacing=spacing)
    with pytest.raises(InputError, match=r"s\.cvol: spacing"):
        read_volume(tmp_path / "s.cvol")


@pytest.mark.parametrize("lazy", [False, True])
def test_raw_endian(tmp_path, lazy):
    values = np.random.default_rng(12).integers(0, 60000, (3, 4, 5)).astype(np.uint16)
    values.astype(">u2").tofile(tmp_path / "be_5x4x3_uint16.raw")
    read = open_volume_lazily if lazy else read_volume
    big = read(tmp_path / "be_5x4x3_uint16.raw", raw_endian="big")
    assert big.source_dtype == "uint16"
    np.testing.assert_array_equal(np.asarray(big.values, dtype=np.float32), values)
    little = read(tmp_path / "be_5x4x3_uint16.raw")  # the default: little-endian
    assert not np.array_equal(np.asarray(little.values, dtype=np.float32), values)
    with pytest.raises(InputError, match="raw_endian = 'middle'"):
        read(tmp_path / "be_5x4x3_uint16.raw", raw_endian="middle")


# --- writers and Volume ------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".npy", ".raw", ".vti", ".cvol"])
def test_write_volume_dispatch_round_trip(tmp_path, ext):
    values = np.random.default_rng(8).random((3, 4, 5), dtype=np.float32) * 100
    path = tmp_path / f"v_5x4x3_float32{ext}"
    write_volume(path, values, spacing=(1.0, 1.0, 1.0))
    np.testing.assert_array_equal(read_volume(path).values, values)


def test_write_raw_converts_dtype_with_rounding(tmp_path):
    values = np.array([[[0.4, 1.6], [254.6, 3.0]]] * 2, dtype=np.float32)
    write_raw(tmp_path / "r_2x2x2_uint8.raw", values, dtype="uint8")
    volume = read_volume(tmp_path / "r_2x2x2_uint8.raw")
    assert volume.source_dtype == "uint8"
    np.testing.assert_array_equal(volume.values, np.rint(values))


def test_volume_normalisation():
    values = np.array([[[-3.0, 1.0], [5.0, 0.0]]] * 2, dtype=np.float32)
    volume = Volume(values=values)
    assert volume.shape == (2, 2, 2) and volume.num_voxels == 8
    assert (volume.vmin, volume.vmax, volume.value_range) == (-3.0, 5.0, 8.0)
    normed = volume.normalized()
    assert normed.dtype == np.float32 and normed.min() == -1.0 and normed.max() == 1.0
    np.testing.assert_allclose(normed, normalize(values, -3.0, 5.0))
    back = denormalize(normed, volume.vmin, volume.vmax)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, values, atol=1e-6)
    chi = np.array([44.67, 1.0353204e8], dtype=np.float32)  # six decades survive the round trip
    np.testing.assert_allclose(denormalize(normalize(chi, *chi), *chi), chi, rtol=1e-6)


def test_denormalize_rounds_once_from_float64():
    """One denormalize (data.volume) for arrays, tensors and VolumeInfo: float64 math, one rounding."""
    import torch

    from neurcomp.data.volume import VolumeInfo

    x = np.random.default_rng(13).uniform(-1, 1, 10000).astype(np.float32)
    lo, hi = 1000.1, 1003.7
    exact = ((x.astype(np.float64) + 1.0) * ((hi - lo) / 2.0) + lo).astype(np.float32)
    np.testing.assert_array_equal(denormalize(x, lo, hi), exact)
    from_tensor = denormalize(torch.from_numpy(x), lo, hi)
    assert from_tensor.dtype == torch.float32
    np.testing.assert_array_equal(from_tensor.numpy(), exact)
    info = VolumeInfo(shape=(2, 2, 2), spacing=(1.0, 1.0, 1.0), vmin=lo, vmax=hi)
    np.testing.assert_array_equal(info.denormalize(torch.from_numpy(x)).numpy(), exact)
