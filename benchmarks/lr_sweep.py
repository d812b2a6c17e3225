"""Learning-rate sweep at equal steps: is ``lr = auto`` within 1 dB of the best fixed learning rate?

    python -m benchmarks.lr_sweep --volumes ../shared/datasets/nucleon_41x41x41_uint8.raw \\
        --ratios 50 200 --steps 1000 --lrs 2e-4 5e-4 1e-3 2e-3 5e-3 --output benchmarks/results/lr_sweep

Each volume x ratio trains one network per learning rate and one with ``lr = auto`` (and, with
``--no-mean-start``, one with ``lr = auto`` but the output bias left at its random start), all for
exactly ``--steps`` steps of the default schedule shape (two decays by 0.2), with the training
pipeline the entry script runs (``training.run.train``). The fixed learning rates run the same
recipe as ``lr = auto`` with only the rule's lr replaced (so the comparison is of the lr alone);
``--original-recipe`` runs them as explicit lrs instead (no mean start). The width comes from ``compression_ratio``
(voxels / parameters). Prints a table (best fixed lr, auto's lr and PSNR, the gap) and writes
``sweep.json``, ``sweep.md`` and ``sweep_<volume>.png`` (PSNR against lr, auto marked).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from neurcomp.config.cli import run_cli

DEFAULT_LRS = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lr_sweep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--volumes", nargs="+", required=True)
    p.add_argument("--ratios", nargs="+", type=float, default=[50.0, 200.0], help="compression_ratio (voxels / parameters)")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps per run (equal for every lr)")
    p.add_argument("--lrs", nargs="+", type=float, default=list(DEFAULT_LRS))
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--grad-lambda", type=float, default=0.0)
    p.add_argument("--no-mean-start", action="store_true", help="also run lr = auto without the mean start")
    p.add_argument("--original-recipe", action="store_true", help="fixed lrs as explicit lrs (no mean start)")
    p.add_argument("--compile", default="off", choices=["auto", "on", "off"])
    p.add_argument("--reuse", nargs="+", default=[],
                   help="earlier sweep.json files: their fixed-lr runs with the same volume, ratio, steps and recipe are "
                        "kept instead of re-run (lr = auto always runs anew, so a changed rule is measured)")
    p.add_argument("--output", default="benchmarks/results/lr_sweep")
    p.add_argument("--work-dir", default="benchmarks/results/tmp/lr_sweep")
    return p


def run_one(path: str, name: str, ratio: float, lr: str, args, work: Path, mean_start: bool = True) -> dict:
    from neurcomp.config.options import parse_config
    from neurcomp.data.readers import read_volume
    from neurcomp.training import recipe
    from neurcomp.training import run as run_module

    fixed_lr = None
    if lr != "auto" and not args.original_recipe:  # the auto recipe with this lr
        fixed_lr, lr = float(lr), "auto"

    num_voxels = read_volume(path).num_voxels
    points = 1024 * 16
    passes = args.steps * points / num_voxels
    cfg = parse_config([
        "--data", path, "--basedir", str(work), "--expname", f"{name}_r{ratio:g}_{lr}",
        "--compression_ratio", str(ratio), "--n_layers", str(args.n_layers), "--lr", lr,
        "--max_pass", repr(passes), "--pass_decay", repr(passes / 3), "--min_steps", str(args.steps),
        "--grad_lambda", str(args.grad_lambda), "--compile", args.compile,
        "--tracking", "none", "--checkpoint_every", "0"])
    real_start, real_rule = run_module.start_at_mean, recipe.auto_learning_rate
    if not mean_start:
        run_module.start_at_mean = lambda *a, **k: None
    if fixed_lr is not None:
        recipe.auto_learning_rate = lambda *a, **k: fixed_lr
    try:
        t0 = time.perf_counter()
        info = run_module.train(cfg, progress=False)
        seconds = time.perf_counter() - t0
    finally:
        run_module.start_at_mean, recipe.auto_learning_rate = real_start, real_rule
    setting = f"{fixed_lr:g}" if fixed_lr is not None else (lr if mean_start else f"{lr}_no_mean_start")
    return {"volume": name, "ratio": ratio, "lr_setting": setting,
            "lr": info["lr"], "width": info["network_layer_sizes"][1], "steps": info["steps"],
            "psnr": info["psnr"], "recoveries": info["recoveries"], "seconds": seconds,
            "n_layers": args.n_layers, "grad_lambda": args.grad_lambda, "original_recipe": args.original_recipe}


def reusable_runs(paths: list[str], args) -> dict:
    """(volume, ratio, lr_setting) -> record, for the fixed-lr runs of earlier sweeps with these settings."""
    found = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        for r in data["runs"] if isinstance(data, dict) else data:
            same = (r.get("steps") == args.steps and r.get("n_layers", 4) == args.n_layers
                    and r.get("grad_lambda", 0.0) == args.grad_lambda
                    and r.get("original_recipe", False) == args.original_recipe)
            if same and not r["lr_setting"].startswith("auto"):
                found[(r["volume"], r["ratio"], r["lr_setting"])] = r
    return found


def summary_rows(records: list[dict]) -> list[dict]:
    rows = []
    keys = dict.fromkeys((r["volume"], r["ratio"]) for r in records)
    for volume, ratio in keys:
        runs = [r for r in records if r["volume"] == volume and r["ratio"] == ratio]
        fixed = [r for r in runs if r["lr_setting"] not in ("auto", "auto_no_mean_start")]
        auto = next((r for r in runs if r["lr_setting"] == "auto"), None)
        no_mean = next((r for r in runs if r["lr_setting"] == "auto_no_mean_start"), None)
        if not fixed or auto is None:
            continue
        best = max(fixed, key=lambda r: r["psnr"])
        rows.append({"volume": volume, "ratio": ratio, "width": auto["width"], "best_lr": best["lr"],
                     "best_psnr": best["psnr"], "auto_lr": auto["lr"], "auto_psnr": auto["psnr"],
                     "gap": auto["psnr"] - best["psnr"], "auto_recoveries": auto["recoveries"],
                     "no_mean_start_psnr": no_mean["psnr"] if no_mean else None,
                     "fixed": {f"{r['lr']:g}": round(r["psnr"], 2) for r in sorted(fixed, key=lambda r: r["lr"])}})
    return rows


def markdown(rows: list[dict]) -> str:
    lrs = sorted({lr for r in rows for lr in r["fixed"]}, key=float)
    head = ["volume", "ratio", "width", *[f"lr {lr}" for lr in lrs], "best", "auto lr", "auto", "auto - best"]
    if any(r["no_mean_start_psnr"] is not None for r in rows):
        head.append("auto without mean start")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["volume"], f"{r['ratio']:g}", str(r["width"]), *[str(r["fixed"].get(lr, "")) for lr in lrs],
                 f"{r['best_psnr']:.2f} ({r['best_lr']:g})", f"{r['auto_lr']:.2g}", f"{r['auto_psnr']:.2f}",
                 f"{r['gap']:+.2f}"]
        if "auto without mean start" in head:
            cells.append("" if r["no_mean_start_psnr"] is None else f"{r['no_mean_start_psnr']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(records: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for volume in dict.fromkeys(r["volume"] for r in records):
        fig, ax = plt.subplots(figsize=(6, 4))
        for ratio in dict.fromkeys(r["ratio"] for r in records if r["volume"] == volume):
            runs = [r for r in records if r["volume"] == volume and r["ratio"] == ratio]
            fixed = sorted((r for r in runs if r["lr_setting"] not in ("auto", "auto_no_mean_start")), key=lambda r: r["lr"])
            line, = ax.plot([r["lr"] for r in fixed], [r["psnr"] for r in fixed], "o-",
                            label=f"ratio {ratio:g} (width {runs[0]['width']})")
            for r in runs:
                if r["lr_setting"] == "auto":
                    ax.plot(r["lr"], r["psnr"], "*", ms=14, color=line.get_color())
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(f"{volume}: PSNR after equal steps (star: lr = auto)")
        ax.grid(True, alpha=0.3)
        ax.legend()
        path = out / f"sweep_{volume}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv=None) -> list[dict]:
    from tqdm import tqdm

    from benchmarks.rate_distortion import volume_names
    from benchmarks.rd_eval import _write_atomic

    args = build_parser().parse_args(argv)
    out, work = Path(args.output), Path(args.work_dir)
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    reuse = reusable_runs(args.reuse, args)
    settings = [f"{lr:g}" for lr in args.lrs] + ["auto"]
    total = len(args.volumes) * len(args.ratios) * (len(settings) + int(args.no_mean_start))
    with tqdm(total=total, unit="run", file=sys.stderr) as bar:
        for path, name in zip(args.volumes, volume_names(args.volumes)):
            for ratio in args.ratios:
                runs = [(s, True) for s in settings] + ([("auto", False)] if args.no_mean_start else [])
                for lr, mean_start in runs:
                    bar.set_description(f"{name} r{ratio:g} lr {lr}")
                    kept = reuse.get((name, ratio, lr)) if mean_start else None
                    records.append(kept or run_one(path, name, ratio, lr, args, work, mean_start))
                    _write_atomic(out / "sweep.json", json.dumps(records, indent=1).encode())
                    bar.update(1)
    rows = summary_rows(records)
    table = markdown(rows)
    _write_atomic(out / "sweep.md", (table + "\n").encode())
    _write_atomic(out / "sweep.json", json.dumps({"runs": records, "summary": rows}, indent=1).encode())
    pngs = plot(records, out)
    print(table)
    print(f"wrote {out / 'sweep.json'}, {out / 'sweep.md'}, " + ", ".join(map(str, pngs)), file=sys.stderr)
    return rows


if __name__ == "__main__":
    sys.exit(run_cli(main))
