"""Rate-distortion records: run a codec, recompute its error in physical units, write and plot.

A record is a flat JSON-serialisable dict (one codec, one volume, one target ratio). PSNR and
errors are recomputed here with `data.metrics.volume_metrics` from the codec's decoded volume,
never taken from the codec. Each record also holds ``mean_psnr``, the PSNR of the trivial codec
that predicts the volume's mean everywhere: the floor any codec must clear. Non-finite floats
(PSNR of a lossless result) are written to JSON as ``null``.

`gap_table` compares, per volume and target ratio, the learned codec with the best classical one.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from neurcomp.data.metrics import psnr, volume_metrics

# The markdown table's columns: (header, record key, format).
TABLE_COLUMNS = (
    ("volume", "volume", "{}"),
    ("codec", "codec", "{}"),
    ("target", "target_ratio", "{:g}"),
    ("ratio", "ratio", "{:.1f}"),
    ("bytes", "num_bytes", "{:d}"),
    ("PSNR dB", "psnr", "{:.2f}"),
    ("max err / range", "max_abs_error_over_range", "{:.2e}"),
    ("enc s", "encode_s", "{:.3f}"),
    ("dec s", "decode_s", "{:.3f}"),
    ("settings", "settings", "{}"),
)

# The learned codec; `gap_rows` counts every other codec as a classical baseline.
LEARNED_CODEC = "neurcomp"
MEAN_PSNR_CHUNK = 1 << 22  # voxels per float64 chunk, as in data.metrics


def mean_predictor_psnr(values) -> float:
    """PSNR of predicting the volume's mean everywhere: 20 log10(range) - 10 log10(variance).

    The reconstruction's MSE is then the (population) variance, so this is the PSNR a codec gets
    from zero bits beyond the mean. Same conventions as `data.metrics.volume_metrics`: inf for a
    constant volume (the mean is exact). Accumulated in float64 chunk by chunk.
    """
    flat = np.asarray(values).reshape(-1)
    if flat.size == 0:
        raise ValueError("mean_predictor_psnr needs a non-empty volume")
    mean = float(np.mean(flat, dtype=np.float64))
    sq_sum = 0.0
    for start in range(0, flat.size, MEAN_PSNR_CHUNK):
        dev = flat[start:start + MEAN_PSNR_CHUNK].astype(np.float64) - mean
        sq_sum += float(np.dot(dev, dev))
    variance = sq_sum / flat.size
    value_range = float(flat.max()) - float(flat.min())
    return psnr(variance, value_range)  # a constant volume has variance 0: inf


def evaluate(codec, values, target_ratio: float, *, volume_name: str = "", work_dir=None) -> dict:
    """Compress ``values`` with ``codec`` at ``target_ratio`` and return one record.

    ``values``: a 3D array, or a `data.volume.Volume` (its ``values``; its file stem names it when
    ``volume_name`` is empty).
    """
    if hasattr(values, "values") and not isinstance(values, np.ndarray):
        if not volume_name and getattr(values, "path", ""):
            volume_name = Path(values.path).stem
        values = values.values
    result = codec.compress_to_ratio(values, target_ratio, work_dir=work_dir)
    values32 = np.asarray(values, dtype=np.float32)
    metrics = volume_metrics(values32, result.decoded)
    vrange = metrics["value_range"]
    return {
        "volume": volume_name,
        "shape": list(result.shape),
        "codec": result.codec,
        "target_ratio": float(target_ratio),
        "ratio": result.ratio,
        "num_bytes": result.num_bytes,
        "psnr": metrics["psnr"],
        "mean_psnr": mean_predictor_psnr(values32),
        "mse": metrics["mse"],
        "rmse": metrics["rmse"],
        "l1_diff": metrics["l1_diff"],
        "max_abs_error": metrics["max_abs_error"],
        "value_range": vrange,
        "max_abs_error_over_range": metrics["max_abs_error"] / vrange if vrange > 0 else math.nan,
        "encode_s": result.encode_seconds,
        "decode_s": result.decode_seconds,
        "params": result.params,
        "options": codec.options(),
    }


def _json_safe(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def _file_mode() -> int:
    """The mode a plainly created file gets (0o666 less the umask); mkstemp would give 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file next to ``path`` and rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _settings(record: dict) -> str:
    """A short human summary of the codec parameters for the table."""
    p = record.get("params") or {}
    parts = []
    if "predictor" in p:
        parts.append(p["predictor"])
    if "abs_error_bound" in p:
        parts.append(f"eb={p['abs_error_bound']:.3g}")
    if "tolerance" in p:
        parts.append(f"tol=2^{p['tolerance_log2']}")
    if "rate" in p:
        parts.append(f"rate={p['rate']:.4g} bpv")
    if p.get("match") not in (None, "matched"):
        parts.append(p["match"])
    return " ".join(parts)


def _fmt(value, fmt: str = "{:.2f}") -> str:
    """A table cell: empty for None, inf / -inf / nan spelled out, else ``fmt``."""
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    return fmt.format(value)


def _cell(record: dict, key: str, fmt: str) -> str:
    return _fmt(_settings(record) if key == "settings" else record.get(key), fmt)


def markdown_table(records: list[dict]) -> str:
    """All records as one markdown table, then PSNR per volume x codec x target ratio."""
    head = [c[0] for c in TABLE_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in records:
        lines.append("| " + " | ".join(_cell(r, key, fmt) for _, key, fmt in TABLE_COLUMNS) + " |")

    ratios = sorted({r["target_ratio"] for r in records})
    rows = defaultdict(dict)
    for r in records:
        rows[(r["volume"], r["codec"])][r["target_ratio"]] = r
    lines += ["", "PSNR (dB) at each target ratio (achieved ratio in parentheses):", "",
              "| volume | codec | " + " | ".join(f"@{t:g}" for t in ratios) + " |",
              "|---|---|" + "|".join("---" for _ in ratios) + "|"]
    for (volume, codec), by_ratio in rows.items():
        cells = []
        for t in ratios:
            r = by_ratio.get(t)
            cells.append("" if r is None else f"{_cell(r, 'psnr', '{:.2f}')} ({r['ratio']:.0f})")
        lines.append(f"| {volume} | {codec} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _psnr_or_nan(record: dict | None) -> float:
    """A record's PSNR as a float; NaN when absent or null (JSON's lossless inf, or a failure)."""
    value = None if record is None else record.get("psnr")
    return math.nan if value is None else float(value)


def _difference(a: float, b: float | None) -> float | None:
    """a - b in dB, or None when either side is missing."""
    return None if b is None or math.isnan(a) or math.isnan(b) else a - b


def gap_rows(records: list[dict]) -> list[dict]:
    """Per volume and target ratio: the best classical codec, Neurcomp, and the gaps between them.

    Classical = every codec but ``LEARNED_CODEC``; the best is the one with the highest PSNR at that
    target (its achieved ratio is kept beside it, as codecs may land above the target or miss an
    unreachable one). ``gap_db`` = Neurcomp PSNR - best classical PSNR (positive: Neurcomp wins);
    ``neurcomp_above_mean_db`` = Neurcomp PSNR - mean-predictor PSNR. Missing pieces are None.
    Rows come in order of the volumes' first appearance, then by target ratio.
    """
    groups: dict[tuple[str, float], list[dict]] = defaultdict(list)
    volume_order: dict[str, int] = {}
    for r in records:
        volume_order.setdefault(r["volume"], len(volume_order))
        groups[(r["volume"], float(r["target_ratio"]))].append(r)

    rows = []
    for (volume, target), recs in sorted(groups.items(), key=lambda kv: (volume_order[kv[0][0]], kv[0][1])):
        classical = [r for r in recs if r["codec"] != LEARNED_CODEC and not math.isnan(_psnr_or_nan(r))]
        best = max(classical, key=lambda r: (_psnr_or_nan(r), r["ratio"]), default=None)
        learned = next((r for r in recs if r["codec"] == LEARNED_CODEC), None)
        mean_psnr = next((r["mean_psnr"] for r in recs if r.get("mean_psnr") is not None), None)
        best_psnr, learned_psnr = _psnr_or_nan(best), _psnr_or_nan(learned)
        rows.append({
            "volume": volume,
            "target_ratio": target,
            "best_classical": None if best is None else best["codec"],
            "classical_psnr": None if best is None else best_psnr,
            "classical_ratio": None if best is None else best["ratio"],
            "neurcomp_psnr": None if learned is None else learned_psnr,
            "neurcomp_ratio": None if learned is None else learned["ratio"],
            "gap_db": _difference(learned_psnr, None if best is None else best_psnr),
            "mean_psnr": mean_psnr,
            "neurcomp_above_mean_db": _difference(learned_psnr, mean_psnr),
        })
    return rows


def gap_table(records: list[dict]) -> str:
    """`gap_rows` as markdown: where Neurcomp stands against the best classical codec."""
    lines = [f"Best classical codec vs {LEARNED_CODEC} per volume and target ratio: PSNR dB (achieved ratio); "
             f"gap = {LEARNED_CODEC} - best classical; mean predictor = PSNR of the volume's mean everywhere; "
             f"-: no {LEARNED_CODEC} result (a ratio no network fits is skipped, as the benchmark prints).", "",
             f"| volume | target | best classical | classical PSNR | {LEARNED_CODEC} PSNR | gap dB "
             f"| mean predictor dB | {LEARNED_CODEC} above mean dB |",
             "|---|---|---|---|---|---|---|---|"]
    for row in gap_rows(records):
        classical = "" if row["best_classical"] is None else \
            f"{_fmt(row['classical_psnr'])} ({row['classical_ratio']:.0f})"
        learned = "-" if row["neurcomp_ratio"] is None else \
            f"{_fmt(row['neurcomp_psnr'])} ({row['neurcomp_ratio']:.0f})"
        cells = [row["volume"], f"{row['target_ratio']:g}", row["best_classical"] or "", classical, learned,
                 _fmt(row["gap_db"], "{:+.2f}"), _fmt(row["mean_psnr"]), _fmt(row["neurcomp_above_mean_db"], "{:+.2f}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


ERROR_BOUNDED = ("sz3", "sperr")  # the rivals a learned codec must beat: the better of the two on each volume


def codec_table(records: list[dict], codecs: list[str]) -> str:
    """Per volume and target ratio, one column per codec (PSNR dB, achieved ratio in parentheses;
    - where a codec has no result), then the last codec's PSNR minus the better of SZ3 and SPERR."""
    groups: dict[tuple[str, float], dict[str, dict]] = defaultdict(dict)
    for r in records:  # records in order of the volumes' first appearance, as gap_rows
        groups[(r["volume"], float(r["target_ratio"]))][r["codec"]] = r
    order = {v: i for i, v in enumerate(dict.fromkeys(r["volume"] for r in records))}
    last = codecs[-1]
    lines = [f"PSNR dB (achieved ratio) per codec; gap = {last} - the better of SZ3 and SPERR; -: no result.", "",
             "| volume | target | " + " | ".join(codecs) + f" | {last} gap dB |",
             "|---|---|" + "|".join("---" for _ in codecs) + "|---|"]
    for (volume, target), by_codec in sorted(groups.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        cells = []
        for codec in codecs:
            r = by_codec.get(codec)
            cells.append("-" if r is None or r.get("psnr") is None else f"{_fmt(r['psnr'])} ({r['ratio']:.0f})")
        rivals = [_psnr_or_nan(by_codec.get(c)) for c in ERROR_BOUNDED]
        rivals = [p for p in rivals if not math.isnan(p)]
        gap = _difference(_psnr_or_nan(by_codec.get(last)), max(rivals) if rivals else None)
        lines.append(f"| {volume} | {target:g} | " + " | ".join(cells) + f" | {_fmt(gap, '{:+.2f}')} |")
    return "\n".join(lines) + "\n"


def write_results(records: list[dict], json_path, md_path, gap_md_path=None) -> None:
    """Write the records as JSON (non-finite floats as null) and as a markdown table, atomically;
    with ``gap_md_path``, also `gap_table` there."""
    payload = json.dumps(_json_safe(records), indent=2, allow_nan=False) + "\n"
    _write_atomic(Path(json_path), payload.encode("utf-8"))
    _write_atomic(Path(md_path), markdown_table(records).encode("utf-8"))
    if gap_md_path is not None:
        _write_atomic(Path(gap_md_path), gap_table(records).encode("utf-8"))


def plot_rd(records: list[dict], png_path) -> Path:
    """PSNR vs achieved ratio (log x), one line per codec, for the records given (one volume).

    Records of several volumes get one line per volume and codec. Lossless points (PSNR inf) are
    left out of the plot. A dashed horizontal line marks each volume's mean-predictor PSNR
    (``mean_psnr``) where the records hold it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    volumes = sorted({r["volume"] for r in records})
    lines = defaultdict(list)
    for r in records:
        label = r["codec"] if len(volumes) == 1 else f"{r['volume']} {r['codec']}"
        psnr = r.get("psnr")
        if psnr is not None and math.isfinite(psnr):
            lines[label].append((r["ratio"], psnr))
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    for label, points in sorted(lines.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    for volume in volumes:
        mean_psnr = next((r["mean_psnr"] for r in records if r["volume"] == volume and r.get("mean_psnr") is not None),
                         None)
        if mean_psnr is not None and math.isfinite(mean_psnr):
            label = "mean predictor" if len(volumes) == 1 else f"{volume} mean predictor"
            ax.axhline(mean_psnr, linestyle="--", color="gray", linewidth=1, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("compression ratio (float32 bytes / compressed bytes)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(volumes[0] if len(volumes) == 1 else "rate-distortion")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{png_path.name}.", suffix=".png", dir=png_path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        os.chmod(tmp, _file_mode())
        os.replace(tmp, png_path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return png_path


def safe_name(name: str) -> str:
    """A volume name usable in a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "volume"


def plot_rd_per_volume(records: list[dict], out_dir, prefix: str = "rd_") -> list[Path]:
    """One `plot_rd` PNG per volume: ``<out_dir>/<prefix><volume>.png``."""
    by_volume = defaultdict(list)
    for r in records:
        by_volume[r["volume"]].append(r)
    return [plot_rd(recs, Path(out_dir) / f"{prefix}{safe_name(volume)}.png") for volume, recs in by_volume.items()]
