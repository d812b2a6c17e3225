#!/usr/bin/env python
"""What pruning buys: each method against unpruned networks, on real volumes, same number of passes.

For every volume the unpruned baseline is trained at three compression ratios (50, 100, 200), giving
a PSNR-vs-ratio curve; every pruning method starts from the ratio-50 network, trains with its gates
for 2/3 of the passes, prunes and fine-tunes for the rest (the real pipeline,
``training.run.train``), and lands at a higher ratio. A method buys something only if its point lies
above the baseline curve at the ratio it reached (``gain_db``: PSNR minus the baseline interpolated
linearly in log ratio; null outside the baseline's range). Pruning changes the shape as well (the
shared width stays, inner widths shrink), so every pruned network is also trained unpruned from
scratch with the same widths, passes and schedule (``gain_vs_same_shape_db``): that separates what
the pruning training buys from what the uneven shape buys.

Two settings per method, the same on every volume: the configs in ``experiment-config-files/``
(the original research's settings; for ``binary`` ours) and one stronger setting. The stronger
settings and the training schedule were chosen once on a volume that is not in this benchmark
(viscous fingers t001) and not tuned afterwards. ``binary`` is also run with the shared residual
width gated (``prune_residual_width``). The ratio-50 baseline is repeated with two more seeds to show
the run-to-run spread, against which every gain has to be read.

Schedule: lr 1e-3, 4096 points per step, the original's decay shape (x0.2 every 20/75 of the
passes), 16 passes on the 64^3-class volumes and 32 on the 41^3 nucleon; one CPU thread per run.

    python benchmarks/pruning_bench.py            # ~15 min of CPU (one thread); results/pruning.{json,png}
    python benchmarks/pruning_bench.py --quick    # a smoke run (few passes, one volume)

Runs finished earlier are reused from the JSON unless ``--fresh``: adding a row to ``METHOD_RUNS`` and
rerunning trains only the new row (and its same-shape control).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATASETS = Path("..") / "shared" / "datasets"  # relative to the repository root
VOLUMES = {  # name -> (file, passes)
    "nucleon": ("nucleon_41x41x41_uint8.raw", 32),
    "viscous_fingers_t050": ("viscous_fingers_run01_t050_64x64x64_float32.npy", 16),
    "neghip": ("neghip_vtk_66x66x66_uint8.npy", 16),
}
BASELINE_RATIOS = (50, 100, 200)
START_RATIO = 50
SPREAD_SEEDS = (1, 2)  # the ratio-50 baseline is repeated with these seeds: the run-to-run noise

SMALLIFY = ["--pruning_momentum", "0.025", "--pruning_threshold", "0.75", "--lambda_weights", "5e-6"]
BINARY = ["--pruning_threshold", "0.5", "--lambda_weights", "5e-6"]
VARIATIONAL = ["--pruning_threshold", "0.9", "--variational_sigma", "-2.5", "--variational_init_droprate", "0.1",
               "--variational_lambda_weight", "1", "--variational_lambda_entropy", "1"]
# the original config's; strong: variational's sigma and KL weight; medium: the KL weight between them
# that removed about a third of the neurons on viscous fingers t001 (sweep 3, 30, 100, 300 there)
SBP = ["--sbp_threshold", "4", "--sbp_lambda_weight", "2"]
# (label, technique, options, prune the shared residual width)
METHOD_RUNS = [
    ("binary config", "binary", BINARY + ["--lambda_betas", "1e-4"], False),
    ("binary strong", "binary", BINARY + ["--lambda_betas", "1e-3"], False),
    ("binary config + shared width", "binary", BINARY + ["--lambda_betas", "1e-4"], True),
    ("smallify original", "smallify", SMALLIFY + ["--lambda_betas", "1e-6"], False),
    ("smallify strong", "smallify", SMALLIFY + ["--lambda_betas", "1e-3"], False),
    ("variational_static original", "variational_static",
     VARIATIONAL + ["--variational_dkl_multiplier", "5e-5", "--variational_lambda_dkl", "3"], False),
    ("variational_static strong", "variational_static",
     VARIATIONAL + ["--variational_dkl_multiplier", "5e-5", "--variational_lambda_dkl", "3e3"], False),
    ("variational_dynamic original", "variational_dynamic",
     VARIATIONAL + ["--variational_dkl_multiplier", "6e-5", "--variational_lambda_dkl", "3"], False),
    ("variational_dynamic strong", "variational_dynamic",
     VARIATIONAL + ["--variational_dkl_multiplier", "6e-5", "--variational_lambda_dkl", "3e3"], False),
    ("sbp_log_normal original", "sbp_log_normal", SBP + ["--sbp_sigma", "-8.8", "--sbp_lambda_dkl", "0.8"], False),
    ("sbp_log_normal medium", "sbp_log_normal", SBP + ["--sbp_sigma", "-2.5", "--sbp_lambda_dkl", "100"], False),
    ("sbp_log_normal strong", "sbp_log_normal", SBP + ["--sbp_sigma", "-2.5", "--sbp_lambda_dkl", "3e3"], False),
]


def common_options(path: Path, passes: float, workdir: Path, expname: str) -> list[str]:
    return ["--data", str(path), "--n_layers", "4", "--lr", "1e-3", "--batch_size", "256", "--sample_size", "16",
            "--max_pass", f"{passes:g}", "--pass_decay", f"{passes * 20 / 75:.4g}", "--lr_decay", "0.2",
            "--prune_fraction", f"{2 / 3:.6f}", "--checkpoint_every", "0", "--tracking", "none", "--seed", "0",
            "--basedir", str(workdir), "--expname", expname, "--device", "cpu"]


def run_one(argv: list[str], prune_residual_width: bool) -> dict:
    import torch

    from neurcomp.config.options import parse_config
    from neurcomp.training.run import train

    torch.set_num_threads(1)
    cfg = parse_config(argv)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    info = train(cfg, progress=False, prune_residual_width=prune_residual_width)
    keys = ("num_parameters", "compression_ratio", "psnr", "network_layer_sizes", "num_parameters_before_pruning",
            "network_layer_sizes_before_pruning", "psnr_before_pruning", "psnr_after_pruning",
            "kept_fraction_per_layer", "pruning_messages", "passes")
    out = {k: info[k] for k in keys if k in info}
    out.update(cpu_seconds=time.process_time() - cpu0, wall_seconds=time.perf_counter() - wall0)
    return out


def baseline_at(curve: list[tuple[float, float]], ratio: float) -> float | None:
    """Baseline PSNR at ``ratio``, linear in log ratio between measured points; None outside."""
    pts = sorted(curve)
    for (r0, p0), (r1, p1) in zip(pts, pts[1:]):
        if r0 <= ratio <= r1:
            t = (math.log(ratio) - math.log(r0)) / (math.log(r1) - math.log(r0))
            return p0 + t * (p1 - p0)
    return None


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for vol in dict.fromkeys(r["volume"] for r in runs):
        vr = [r for r in runs if r["volume"] == vol]
        curve = [(r["compression_ratio"], r["psnr"]) for r in vr if r["method"] == "baseline"]
        scratch = {r["label"].split(" / ")[0]: r["psnr"] for r in vr if r["method"] == "scratch"}
        for r in vr:
            base = baseline_at(curve, r["compression_ratio"]) if r["method"] not in ("baseline", "baseline_seed",
                                                                                     "scratch") else None
            same = scratch.get(r["label"])
            rnd = lambda v: round(v, 2) if v is not None else None  # noqa: E731
            rows.append({"volume": vol, "run": r["label"], "ratio": round(r["compression_ratio"], 1),
                         "psnr": round(r["psnr"], 2),
                         "psnr_before_pruning": rnd(r.get("psnr_before_pruning")),
                         "psnr_after_pruning": rnd(r.get("psnr_after_pruning")),
                         "baseline_psnr_at_ratio": rnd(base),
                         "gain_db": rnd(r["psnr"] - base) if base is not None else None,
                         "same_shape_scratch_psnr": rnd(same),
                         "gain_vs_same_shape_db": rnd(r["psnr"] - same) if same is not None else None,
                         "widths": r["network_layer_sizes"][1:-1], "cpu_s": round(r["cpu_seconds"], 1)})
    return rows


def seed_spread(runs: list[dict]) -> dict:
    """Per volume: PSNRs of the ratio-50 baseline over seeds 0, 1, 2, and their max - min."""
    out = {}
    for vol in dict.fromkeys(r["volume"] for r in runs):
        ps = [r["psnr"] for r in runs if r["volume"] == vol and (
            r["label"] == f"baseline ratio {START_RATIO}" or r["method"] == "baseline_seed")]
        out[vol] = {"psnr_seeds_0_1_2": [round(p, 2) for p in ps], "range_db": round(max(ps) - min(ps), 2)}
    return out


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vols = list(dict.fromkeys(r["volume"] for r in runs))
    fig, axes = plt.subplots(1, len(vols), figsize=(5.5 * len(vols), 4.5), squeeze=False, constrained_layout=True)
    markers = {"binary": "s", "smallify": "^", "variational_static": "o", "variational_dynamic": "D",
               "sbp_log_normal": "v"}
    for ax, vol in zip(axes[0], vols):
        vr = [r for r in runs if r["volume"] == vol]
        base = sorted((r["compression_ratio"], r["psnr"]) for r in vr if r["method"] == "baseline")
        ax.plot([b[0] for b in base], [b[1] for b in base], "k-o", label="unpruned baseline")
        seeds = [r for r in vr if r["method"] == "baseline_seed"]
        ax.scatter([r["compression_ratio"] for r in seeds], [r["psnr"] for r in seeds], marker="_", s=150,
                   color="k", label="baseline, other seeds")
        scratch = [r for r in vr if r["method"] == "scratch"]
        ax.scatter([r["compression_ratio"] for r in scratch], [r["psnr"] for r in scratch], marker="x", s=40,
                   color="0.4", label="pruned shape, trained from scratch")
        for r in vr:
            if r["method"] in ("baseline", "baseline_seed", "scratch"):
                continue
            strong = "strong" in r["label"]
            ax.scatter(r["compression_ratio"], r["psnr"], marker=markers[r["method"]], s=55,
                       facecolors=None if strong else "none",
                       edgecolors=f"C{list(markers).index(r['method'])}",
                       color=f"C{list(markers).index(r['method'])}", label=r["label"],
                       linewidths=2.5 if "shared" in r["label"] else 1.2)
        ax.set_xscale("log")
        ax.set_xticks([50, 100, 200, 400])
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("compression ratio (voxels / parameters)")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(f"{vol}, {vr[0]['passes']:.0f} passes")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/pruning.json")
    p.add_argument("--workdir", default="benchmarks/results/tmp/pruning", help="experiment folders (gitignored)")
    p.add_argument("--volumes", nargs="+", default=list(VOLUMES), choices=list(VOLUMES))
    p.add_argument("--quick", action="store_true", help="smoke run: nucleon, 4 passes, writes *_quick.json")
    p.add_argument("--fresh", action="store_true", help="rerun everything instead of reusing finished runs")
    args = p.parse_args(argv)
    import os

    os.chdir(REPO)  # the volumes are named relative to the repository root

    out = Path(args.out)
    volumes = ["nucleon"] if args.quick else args.volumes
    if args.quick:
        out = out.with_name(out.stem + "_quick.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = {} if args.fresh or not out.exists() else {
        (r["volume"], r["label"]): r for r in json.loads(out.read_text()).get("runs", [])}
    runs = []
    for vol in volumes:
        name, passes = VOLUMES[vol]
        path = DATASETS / name
        if not (REPO / path).exists():
            print(f"skipping {vol}: {path} not found (the shared datasets live beside the repository)")
            continue
        passes = 4 if args.quick else passes
        todo = [(f"baseline ratio {r}", "baseline", ["--compression_ratio", str(r)], False) for r in BASELINE_RATIOS]
        todo += [(f"baseline ratio {START_RATIO} seed {seed}", "baseline_seed",  # run-to-run spread
                  ["--compression_ratio", str(START_RATIO), "--seed", str(seed)], False) for seed in SPREAD_SEEDS]
        todo += [(label, tech, ["--compression_ratio", str(START_RATIO), "--dropout_technique", tech, *opts], shared)
                 for label, tech, opts, shared in METHOD_RUNS]
        while todo:
            label, method, opts, shared = todo.pop(0)
            if (vol, label) in previous:
                result = previous[(vol, label)]
                runs.append(result)
            else:
                expname = f"{vol}_{label.replace(' ', '_').replace('+', 'and').replace('/', '')}"
                argv_run = common_options(path, passes, Path(args.workdir), expname) + opts
                print(f"[{vol}] {label} ...", flush=True)
                result = {"volume": vol, "label": label, "method": method, "options": opts,
                          "prune_residual_width": shared, **run_one(argv_run, shared)}
                runs.append(result)
                print(f"    ratio {result['compression_ratio']:.1f}, PSNR {result['psnr']:.2f} dB, widths "
                      f"{result['network_layer_sizes'][1:-1]}, {result['cpu_seconds']:.0f} s CPU", flush=True)
                out.write_text(json.dumps({"runs": runs}, indent=1))  # partial results survive an interrupt
            if result.get("num_parameters_before_pruning", 0) > result["num_parameters"] and not shared:
                # control: the pruned shape trained unpruned from scratch, same passes and schedule
                widths = [str(w) for w in result["network_layer_sizes"][1:-1]]
                todo.insert(0, (f"{label} / same shape from scratch", "scratch", ["--feature_list", *widths], False))
    rows = summarise(runs)
    total_cpu = sum(r["cpu_seconds"] for r in runs)
    doc = {"description": __doc__.split("\n\n")[0], "baseline_ratios": BASELINE_RATIOS, "start_ratio": START_RATIO,
           "volumes": {v: {"file": str(DATASETS / VOLUMES[v][0]), "passes": 4 if args.quick else VOLUMES[v][1]}
                       for v in volumes},
           "total_cpu_seconds": total_cpu, "seed_spread": seed_spread(runs), "summary": rows, "runs": runs}
    out.write_text(json.dumps(doc, indent=1))
    plot(runs, out.with_suffix(".png"))
    print(f"\n{'volume':21s} {'run':52s} {'ratio':>6s} {'PSNR':>6s} {'base@r':>6s} {'gain':>6s} "
          f"{'scratch':>7s} {'gain':>6s}  widths")
    for r in rows:
        fmt = lambda v: f"{v:6.2f}" if isinstance(v, (int, float)) else f"{'-':>6s}"  # noqa: E731
        print(f"{r['volume']:21s} {r['run']:52s} {r['ratio']:6.1f} {r['psnr']:6.2f} {fmt(r['baseline_psnr_at_ratio'])} "
              f"{fmt(r['gain_db'])} {fmt(r['same_shape_scratch_psnr']):>7s} {fmt(r['gain_vs_same_shape_db'])}  "
              f"{r['widths']}")
    for vol, spread in doc["seed_spread"].items():
        print(f"{vol}: ratio-{START_RATIO} baseline over seeds 0, 1, 2: {spread['psnr_seeds_0_1_2']} dB "
              f"(range {spread['range_db']} dB)")
    print(f"total CPU {total_cpu / 60:.1f} min; wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
