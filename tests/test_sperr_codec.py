"""SPERR (hdf5plugin's HDF5 filter) behind the `Codec` interface; the best-classical gap table;
the mean-predictor PSNR.

SPERR's ratio moves almost continuously with the bit rate (hdf5plugin's rate grid is 2^-16 bits per
value, about one byte on a 24^3 volume), so every target here must be matched within 2%.
"""

import json
import math

import numpy as np
import pytest

from neurcomp.compressors import CODECS, get_codec
from benchmarks.rd_eval import evaluate, gap_rows, gap_table, mean_predictor_psnr, plot_rd, write_results

h5py = pytest.importorskip("h5py", reason="h5py is needed for the SPERR codec (pip install -r requirements-dev.txt)")
hdf5plugin = pytest.importorskip("hdf5plugin", reason="hdf5plugin (SPERR's HDF5 filter) is not installed; "
                                                      "pip install -r requirements-dev.txt")

if not hasattr(hdf5plugin, "Sperr"):
    pytest.skip(f"hdf5plugin {hdf5plugin.version} has no SPERR filter (needs >= 5.1)", allow_module_level=True)

from neurcomp.compressors.sperr import RATE_QUANTUM, SPERRCodec  # noqa: E402

RATIOS = (20, 50, 100)


def _smooth_volume(shape=(24, 24, 24)) -> np.ndarray:
    z, y, x = np.meshgrid(*(np.linspace(0.0, 1.0, n) for n in shape), indexing="ij")
    v = np.sin(3 * x) * np.cos(2 * y) + 0.5 * z ** 2 + 0.2 * np.sin(5 * (x + y + z))
    return (10.0 * v + 3.0).astype(np.float32)


def _numpy_psnr(gt: np.ndarray, recon: np.ndarray) -> float:
    gt64 = gt.astype(np.float64)
    mse = np.mean((recon.astype(np.float64) - gt64) ** 2)
    return 20.0 * math.log10(gt64.max() - gt64.min()) - 10.0 * math.log10(mse)


_records: dict = {}


def _sperr_record(ratio: float) -> tuple[np.ndarray, dict]:
    """(volume, record) for SPERR on the 24^3 smooth field, once per ratio for the module."""
    if ratio not in _records:
        values = _smooth_volume()
        _records[ratio] = (values, evaluate(get_codec("sperr"), values, ratio, volume_name="smooth24"))
    return _records[ratio]


# --------------------------------------------------------------------------------------------
# SPERR codec
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", RATIOS)
def test_sperr_hits_ratio_and_decodes_from_payload(ratio):
    values = _smooth_volume()
    codec = get_codec("sperr")
    result = codec.compress_to_ratio(values, ratio)

    assert result.codec == "sperr" and result.params["match"] == "matched"
    assert abs(result.ratio / ratio - 1) <= 0.02, result.ratio
    assert result.num_bytes == len(result.payload)
    assert result.ratio == pytest.approx(values.size * 4 / len(result.payload))
    assert result.decoded.shape == values.shape and result.decoded.dtype == np.float32

    # Decoding the payload alone gives exactly what HDF5 reads back from the file it was written to.
    payload, filter_decoded = SPERRCodec.compress_and_read_back(values, result.params["rate"])
    assert payload == result.payload
    np.testing.assert_array_equal(codec.decompress(payload, values.shape), filter_decoded)
    np.testing.assert_array_equal(result.decoded, filter_decoded)
    assert _numpy_psnr(values, result.decoded) > 30.0  # a real reconstruction, not noise


def test_sperr_params_record_rate_search_and_library():
    values, record = _sperr_record(50)
    params = record["params"]
    assert record["codec"] == "sperr" and record["options"] == {"rel_tol": 0.02, "max_evals": 40}
    assert params["mode"] == "fixed_rate" and params["swap"] is True
    assert params["library"] == f"hdf5plugin {hdf5plugin.version}"
    # the rate is on hdf5plugin's fixed-point grid and near 32 / ratio bits per value (header aside)
    assert params["rate"] / RATE_QUANTUM == int(params["rate"] / RATE_QUANTUM)
    assert 0.9 * 32 / 50 < params["rate"] <= 32 / 50
    cands = params["candidates"]
    assert len(cands) == params["search_evals"] >= 2
    assert {"rate": params["rate"], "ratio": record["ratio"]} in cands
    # ratio falls as the rate grows
    by_rate = sorted(cands, key=lambda c: c["rate"])
    assert all(a["ratio"] >= b["ratio"] for a, b in zip(by_rate, by_rate[1:]))
    assert json.loads(json.dumps(params)) == params  # JSON-serialisable
    assert record["psnr"] == pytest.approx(
        _numpy_psnr(values, SPERRCodec().decompress(SPERRCodec.compress(values, params["rate"]), values.shape)))


def test_sperr_higher_ratio_lower_psnr():
    psnrs = [_sperr_record(r)[1]["psnr"] for r in RATIOS]
    assert all(math.isfinite(p) for p in psnrs)
    assert psnrs[0] > psnrs[1] > psnrs[2], psnrs


def test_sperr_payload_carries_everything_decoding_needs():
    values = _smooth_volume()
    payload, filter_decoded = SPERRCodec.compress_and_read_back(values, 1.0)
    # The decoder's filter options (mode, quality, swap) do not matter: only the shape does.
    for options in ({"rate": 7.5}, {"rate": 0.1, "swap": False}, {"absolute": 1e-3}):
        with h5py.File("decode.h5", "w", driver="core", backing_store=False) as h5:
            dset = h5.create_dataset("v", shape=values.shape, dtype=np.float32, chunks=values.shape,
                                     **hdf5plugin.Sperr(**options))
            dset.id.write_direct_chunk((0, 0, 0), payload)
            np.testing.assert_array_equal(dset[...], filter_decoded)
    assert payload[0] == 0  # H5Z-SPERR's missing-value mode: none


def test_sperr_non_cubic_volume_keeps_axis_order():
    # Without hdf5plugin's rank-order swap SPERR would read the rows of a non-cubic C-order volume
    # with the wrong length (about 25 dB here instead of over 60 dB).
    values = _smooth_volume((40, 23, 11))
    result = get_codec("sperr").compress_to_ratio(values, 32)
    assert result.params["match"] == "matched"
    assert _numpy_psnr(values, result.decoded) > 50.0
    with pytest.raises(ValueError, match="holds shape"):
        SPERRCodec().decompress(result.payload, (11, 23, 40))


def test_sperr_rejects_what_its_filter_cannot_take():
    codec = get_codec("sperr")
    with pytest.raises(ValueError, match=">= 9"):
        codec.compress_to_ratio(_smooth_volume((24, 24, 8)), 10)
    with pytest.raises(ValueError, match="stop_tol"):
        SPERRCodec(rel_tol=0.01, stop_tol=0.05)


def test_sperr_unreachable_ratio_is_reported():
    values = _smooth_volume()
    result = get_codec("sperr").compress_to_ratio(values, 1e6)  # the ~20-byte header alone is ratio ~2800
    assert result.params["match"] == "unreachable" and result.ratio < 1e6


def test_sperr_registered_and_cli():
    from benchmarks.rate_distortion import build_parser

    assert CODECS["sperr"] is SPERRCodec
    args = build_parser().parse_args(["--volumes", "v.raw", "--codecs", "sperr", "--sperr-rel-tol", "0.05",
                                      "--sperr-max-evals", "12"])
    codec = SPERRCodec.from_args(args)
    assert codec.rel_tol == 0.05 and codec.max_evals == 12 and codec.stop_tol == pytest.approx(0.002)


# --------------------------------------------------------------------------------------------
# Mean-predictor PSNR and the gap table
# --------------------------------------------------------------------------------------------


def test_mean_predictor_psnr():
    values = _smooth_volume()
    gt = values.astype(np.float64)
    expected = _numpy_psnr(values, np.full_like(values, gt.mean()))
    assert mean_predictor_psnr(values) == pytest.approx(expected, rel=1e-9)
    assert mean_predictor_psnr(values) == pytest.approx(
        20 * math.log10(gt.max() - gt.min()) - 10 * math.log10(gt.var()), rel=1e-12)
    # two values 0 and 4, half each: range 4, variance 4 -> 20 log10 4 - 10 log10 4 = 10 log10 4
    assert mean_predictor_psnr(np.array([0, 4] * 4, np.uint8).reshape(2, 2, 2)) == pytest.approx(10 * math.log10(4))
    assert mean_predictor_psnr(np.full((3, 3, 3), 7.0)) == math.inf
    # stored in each record by evaluate
    assert _sperr_record(20)[1]["mean_psnr"] == pytest.approx(expected, rel=1e-9)


def _rec(volume, codec, target, psnr, ratio=None, mean_psnr=12.0):
    return {"volume": volume, "codec": codec, "target_ratio": float(target), "ratio": ratio or float(target),
            "psnr": psnr, "mean_psnr": mean_psnr}


def test_gap_table_picks_best_classical_per_ratio():
    records = [
        _rec("a", "sz3", 100, 52.0, 100.4), _rec("a", "sperr", 100, 57.0, 99.9), _rec("a", "zfp", 100, 33.0, 117.0),
        _rec("a", "neurcomp", 100, 31.5, 98.7),
        _rec("a", "sz3", 400, 45.0), _rec("a", "sperr", 400, 44.0), _rec("a", "neurcomp", 400, 46.5, 401.0),
        _rec("b", "zfp", 100, 20.0, mean_psnr=9.5),  # no neurcomp run for this volume
        _rec("b", "sz3", 100, None, mean_psnr=9.5),  # a null PSNR (e.g. from JSON) is not compared
    ]
    rows = gap_rows(records)
    assert [(r["volume"], r["target_ratio"]) for r in rows] == [("a", 100.0), ("a", 400.0), ("b", 100.0)]

    a100, a400, b100 = rows
    assert a100["best_classical"] == "sperr" and a100["classical_psnr"] == 57.0 and a100["classical_ratio"] == 99.9
    assert a100["neurcomp_psnr"] == 31.5 and a100["neurcomp_ratio"] == 98.7
    assert a100["gap_db"] == pytest.approx(31.5 - 57.0)
    assert a100["mean_psnr"] == 12.0 and a100["neurcomp_above_mean_db"] == pytest.approx(19.5)
    assert a400["best_classical"] == "sz3" and a400["gap_db"] == pytest.approx(1.5)
    assert b100["best_classical"] == "zfp" and b100["neurcomp_psnr"] is None and b100["gap_db"] is None
    assert b100["mean_psnr"] == 9.5 and b100["neurcomp_above_mean_db"] is None

    md = gap_table(records)
    lines = md.splitlines()
    assert lines[2].startswith("| volume | target | best classical |")
    assert "| a | 100 | sperr | 57.00 (100) | 31.50 (99) | -25.50 | 12.00 | +19.50 |" in lines
    assert "| a | 400 | sz3 | 45.00 (400) | 46.50 (401) | +1.50 | 12.00 | +34.50 |" in lines
    assert "| b | 100 | zfp | 20.00 (100) | - |  | 9.50 |  |" in lines


def test_gap_table_written_and_plot_shows_mean_line(tmp_path):
    records = [_sperr_record(r)[1] for r in RATIOS]
    records += [dict(r, codec="neurcomp", psnr=r["psnr"] - 10.0) for r in records]
    json_path, md_path, gap_path = tmp_path / "rd.json", tmp_path / "rd.md", tmp_path / "rd_gap.md"
    write_results(records, json_path, md_path, gap_path)
    assert gap_path.read_text() == gap_table(records)
    rows = gap_rows(records)
    assert [r["best_classical"] for r in rows] == ["sperr"] * 3
    assert all(r["gap_db"] == pytest.approx(-10.0) for r in rows)
    assert json.loads(json_path.read_text())[0]["mean_psnr"] == pytest.approx(records[0]["mean_psnr"])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seen = {}
    real_savefig = plt.Figure.savefig

    def spy(fig, *args, **kwargs):  # inspect the figure plot_rd draws before it is saved
        ax = fig.axes[0]
        seen["labels"] = [line.get_label() for line in ax.get_lines()]
        seen["mean"] = [line.get_ydata()[0] for line in ax.get_lines() if line.get_label() == "mean predictor"]
        return real_savefig(fig, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plt.Figure, "savefig", spy)
        png = plot_rd(records, tmp_path / "rd_smooth24.png")
    assert png.stat().st_size > 1000
    assert sorted(seen["labels"]) == ["mean predictor", "neurcomp", "sperr"]
    assert seen["mean"] == [pytest.approx(records[0]["mean_psnr"])]
