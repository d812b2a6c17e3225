"""What a search reports after every trial: the Pareto front, trials.csv, pareto.json, pareto.png and
the best config per compression-ratio bucket."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from neurcomp.search.space import SearchSpace, overrides
from neurcomp.search.state import SearchState, atomic_path, atomic_write


def pareto_front(records: dict[int, dict], thresholds: dict) -> list[int]:
    """Trial indices on the observed Pareto front, by increasing ratio.

    Completed trials meeting the thresholds that no other such trial beats in both PSNR and ratio.
    (Ax's ``get_pareto_frontier`` fits a model even for observed values, and without thresholds it
    infers some from that model, which can drop real front points; this is the plain definition.)
    """
    ok = {i: r for i, r in records.items() if r["status"] == "completed"
          and r["psnr"] >= thresholds.get("psnr", -math.inf)
          and r["compression_ratio"] >= thresholds.get("compression_ratio", -math.inf)}

    def dominated(i):
        a = ok[i]
        return any(b["psnr"] >= a["psnr"] and b["compression_ratio"] >= a["compression_ratio"]
                   and (b["psnr"] > a["psnr"] or b["compression_ratio"] > a["compression_ratio"])
                   for j, b in ok.items() if j != i)

    return sorted((i for i in ok if not dominated(i)), key=lambda i: (ok[i]["compression_ratio"], i))


def write_trials_csv(path: Path, records: dict[int, dict], space: SearchSpace, front: list[int], nodes: dict) -> None:
    names = [p.name for p in space.parameters]
    cols = ["trial", "status", "psnr", "compression_ratio", "num_parameters", "network_layer_sizes", "on_front",
            *names, "generation_node", "seconds", "device", "folder", "error"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for i in sorted(records):
            r = records[i]
            sizes = r.get("network_layer_sizes")
            w.writerow([i, r["status"], r.get("psnr"), r.get("compression_ratio"), r.get("num_parameters"),
                        " ".join(map(str, sizes)) if sizes else "", i in front,
                        *[r["parameters"].get(n) for n in names], nodes.get(i, ""), r.get("seconds"),
                        r.get("device", ""), r.get("folder"), r.get("error", "")])


def write_pareto_png(path: Path, records: dict[int, dict], front: list[int], thresholds: dict, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    completed = {i: r for i, r in records.items() if r["status"] == "completed"}
    fig = Figure(figsize=(7, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    others = [r for i, r in completed.items() if i not in front]
    ax.scatter([r["compression_ratio"] for r in others], [r["psnr"] for r in others], c="0.6", s=25,
               label="trial", zorder=2)
    if front:
        fr = [completed[i] for i in front]
        ax.plot([r["compression_ratio"] for r in fr], [r["psnr"] for r in fr], "-", c="tab:red", lw=1, zorder=3)
        ax.scatter([r["compression_ratio"] for r in fr], [r["psnr"] for r in fr], c="tab:red", s=45,
                   edgecolors="k", label="Pareto front", zorder=4)
        for i in front:
            ax.annotate(str(i), (completed[i]["compression_ratio"], completed[i]["psnr"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
    if "compression_ratio" in thresholds:
        ax.axvline(thresholds["compression_ratio"], ls="--", c="tab:blue", lw=1, label="ratio threshold")
    if "psnr" in thresholds:
        ax.axhline(thresholds["psnr"], ls="--", c="tab:green", lw=1, label="PSNR threshold")
    ratios = [r["compression_ratio"] for r in completed.values()]
    if ratios and min(ratios) > 0:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_xscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain if max(ratios) < 10 * min(ratios) else NullFormatter())
    ax.set_xlabel("compression ratio (voxels / parameters)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if completed:
        ax.legend(fontsize=8)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)


def best_config_text(base_config: str, fixed: dict, parameters: dict, expname: str, header: str) -> str:
    """A complete config file: the base config with the trial's settings, for NeurcompTraining.py."""
    from neurcomp.config.options import build_parser, config_from_namespace, format_config_file, parse_namespace

    cfg = config_from_namespace(parse_namespace(build_parser(), ["--config", base_config, *overrides(fixed),
                                                                 *overrides(parameters)]))
    raw = cfg.flat()
    raw["expname"] = expname
    return header + format_config_file(raw)


def write_best_configs(folder: Path, records: dict[int, dict], buckets: list[float], thresholds: dict,
                       base_config: str, fixed: dict) -> dict:
    """best_configs/ratio_<X>.txt for each bucket X that some completed trial reaches."""
    folder.mkdir(exist_ok=True)
    for old in folder.glob("ratio_*.txt"):
        old.unlink()
    completed = [r for r in records.values() if r["status"] == "completed"
                 and r["psnr"] >= thresholds.get("psnr", -math.inf)]
    written = {}
    for x in buckets:
        fits = [r for r in completed if r["compression_ratio"] >= x]
        if not fits:
            continue
        best = max(fits, key=lambda r: (r["psnr"], r["compression_ratio"]))
        tag = f"{x:g}"
        path = folder / f"ratio_{tag}.txt"
        header = (f"# best PSNR at compression ratio >= {tag} in this search: trial {best['index']}, "
                  f"PSNR {best['psnr']:.3f} dB, ratio {best['compression_ratio']:.2f}\n"
                  f"# settings: {json.dumps({**fixed, **best['parameters']})}\n")
        atomic_write(path, best_config_text(base_config, fixed, best["parameters"], f"best_ratio_{tag}", header))
        written[tag] = {"trial": best["index"], "file": str(path.relative_to(folder.parent)),
                        "psnr": best["psnr"], "compression_ratio": best["compression_ratio"]}
    return written


def write_outputs(client, state: SearchState, space: SearchSpace, out: Path, args,
                  buckets) -> tuple[list[int], list[Path]]:
    records = state.records
    thresholds = {}
    if args.min_psnr is not None:
        thresholds["psnr"] = args.min_psnr
    if args.min_ratio is not None:
        thresholds["compression_ratio"] = args.min_ratio
    front = pareto_front(records, thresholds)
    try:
        df = client.summarize()
        nodes = {int(t): str(n) for t, n in zip(df["trial_index"], df["generation_node"])}
    except Exception:  # noqa: BLE001 - the column is a convenience
        nodes = {}
    write_trials_csv(out / "trials.csv", records, space, front, nodes)
    best = write_best_configs(out / "best_configs", records, buckets, thresholds, state.data["base_config"],
                              space.fixed)
    completed = sum(r["status"] == "completed" for r in records.values())
    failed = sum(r["status"] == "failed" for r in records.values())
    pareto = {
        "objectives": {"psnr": "maximize", "compression_ratio": "maximize"},
        "thresholds": thresholds,
        "base_config": state.data["base_config"],
        "search_space": state.data["search_space_file"],
        "fixed": space.fixed,
        "trials_completed": completed,
        "trials_failed": failed,
        "front": [{"trial": i, "psnr": records[i]["psnr"], "compression_ratio": records[i]["compression_ratio"],
                   "num_parameters": records[i].get("num_parameters"),
                   "network_layer_sizes": records[i].get("network_layer_sizes"),
                   "parameters": records[i]["parameters"], "folder": records[i]["folder"]} for i in front],
        "best_configs": best,
    }
    atomic_write(out / "pareto.json", json.dumps(pareto, indent=2, default=str) + "\n")
    write_pareto_png(out / "pareto.png", records, front, thresholds,
                     f"{out.name}: {completed} trials, {len(front)} on the Pareto front"
                     + (f", {failed} failed" if failed else ""))
    return front, [out / "trials.csv", out / "pareto.json", out / "pareto.png"]

