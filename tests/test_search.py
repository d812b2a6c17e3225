"""The Ax hyperparameter search: search-space files, trial runner, the search loop and its resume."""

import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("ax") is None:  # find_spec: the Ax import itself takes ~10 s
    pytest.skip("ax-platform is not installed (pip install -r requirements-search.txt)", allow_module_level=True)

from neurcomp.config.errors import ConfigError  # noqa: E402
from neurcomp.config.options import parse_config  # noqa: E402
from neurcomp.search import ax_loop, cli, reports  # noqa: E402
from neurcomp.search.runner import TrialRunner, failure_reason  # noqa: E402
from neurcomp.search.space import check_against_config, load_search_space, overrides  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPACES = REPO / "experiment-config-files" / "search_spaces"


def write_json(path, doc):
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


@pytest.fixture
def tiny(tmp_path):
    """A 12^3 volume and a base config that trains it in a few steps."""
    volume = tmp_path / "vol.npy"
    x = np.linspace(0, 1, 12, dtype=np.float32)
    np.save(volume, (np.sin(6 * x)[:, None, None] * np.cos(4 * x)[None, :, None] + x[None, None, :]).astype(np.float32))
    base = tmp_path / "base.txt"
    base.write_text(f"expname = tiny\ndata = {volume}\nn_layers = 2\nfeatures_per_layer = 8\nlr = 1e-3\n"
                    "max_pass = 2\npass_decay = 1\nbatch_size = 64\nsample_size = 4\ncheckpoint_every = 0\n"
                    "device = cpu\ntracking = mlflow\n")
    return tmp_path, base


# ---------------------------------------------------------------- search-space files

@pytest.mark.parametrize("name", ["baseline", "smallify", "variational"])
def test_shipped_spaces_parse(name):
    space = load_search_space(SPACES / f"{name}.json")
    names = {p.name for p in space.parameters}
    assert {"n_layers", "features_per_layer"} <= names
    assert space.by_name()["n_layers"].value_type == "int" and space.by_name()["n_layers"].bounds == (2, 6)
    if name != "baseline":
        assert space.fixed == {"dropout_technique": name}
    check_against_config(space, str(REPO / "experiment-config-files" / "quickstart.txt"))


def test_smallify_space_values():
    p = load_search_space(SPACES / "smallify.json").by_name()
    assert p["lambda_betas"].bounds == (1e-8, 9e-4) and p["lambda_betas"].log_scale
    assert p["lambda_weights"].bounds == (5e-8, 5e-3) and p["pruning_momentum"].log_scale
    assert p["pruning_threshold"].bounds == (0.6, 0.9) and not p["pruning_threshold"].log_scale


def test_variational_space_values():
    p = load_search_space(SPACES / "variational.json").by_name()
    assert p["variational_sigma"].bounds == (-10.0, -1.0)
    assert p["lr"].log_scale and p["lr"].bounds == (8e-5, 1e-3)
    assert p["variational_lambda_dkl"].log_scale and p["variational_init_droprate"].bounds == (0.1, 0.8)


def test_choice_fixed_and_overrides(tmp_path):
    f = write_json(tmp_path / "s.json", {"parameters": [
        {"name": "use_resnet", "type": "choice", "values": [True, False]},
        {"name": "omega_0", "type": "choice", "values": [20, 30]},
        {"name": "variational_sigma", "type": "range", "bounds": [-8, -2]},
        {"name": "lr", "type": "fixed", "value": 1e-4}]})
    space = load_search_space(f)
    assert space.by_name()["omega_0"].values == (20.0, 30.0)  # a float option: values as floats
    assert space.fixed == {"lr": 1e-4}
    assert overrides({"use_resnet": False, "variational_sigma": -2.5, "n_layers": 3}) == [
        "--use_resnet=false", "--variational_sigma=-2.5", "--n_layers=3"]


@pytest.mark.slow  # imports Ax (~10 s)
def test_space_as_ax_parameters():
    params = {a.name: a for a in load_search_space(SPACES / "smallify.json").ax_parameters()}
    assert set(params) == {"n_layers", "features_per_layer", "lambda_betas", "lambda_weights", "pruning_momentum",
                           "pruning_threshold"}  # the fixed dropout_technique is passed to trials, not to Ax
    assert params["n_layers"].parameter_type == "int" and params["n_layers"].bounds == (2, 6)
    assert params["lambda_betas"].scaling == "log" and params["pruning_threshold"].scaling == "linear"


@pytest.mark.parametrize("doc, message", [
    ('{"parameters": [', "invalid JSON at line 1"),
    ({"parameters": [{"name": "n_layer", "type": "range", "bounds": [2, 6]}]},
     "'n_layer' is not a training option (did you mean 'n_layers'?)"),
    ({"parameters": [{"name": "n_layers", "type": "range", "bounds": [6, 2]}]}, "need lo < hi"),
    ({"parameters": [{"name": "lr", "type": "range", "bounds": [1e-3, 1e-3]}]}, "need lo < hi"),
    ({"parameters": [{"name": "lr", "type": "range", "bounds": [0, 1e-3], "log_scale": True}]},
     "log_scale needs bounds > 0"),
    ({"parameters": [{"name": "lr", "type": "uniform", "bounds": [0, 1]}]}, "unknown type 'uniform'"),
    ({"parameters": [{"name": "lr", "type": "range", "bounds": [1e-4]}]}, "two finite numbers"),
    ({"parameters": [{"name": "n_layers", "type": "range", "bounds": [2, 6.5]}]}, "integer bounds"),
    ({"parameters": [{"name": "lr", "type": "range", "bounds": [1e-4, 1e-3], "scale": "log"}]}, "unknown key 'scale'"),
    ({"parameters": [{"name": "n_layers", "type": "choice", "values": [2]}]}, "at least two values"),
    ({"parameters": [{"name": "n_layers", "type": "choice", "values": [2, "three"]}]}, "not of type int"),
    ({"parameters": [{"name": "device", "type": "choice", "values": ["cpu", "tpu"]}]}, "not one of"),
    ({"parameters": [{"name": "dropout_technique", "type": "range", "bounds": [0, 1]}]}, "needs a numeric option"),
    ({"parameters": [{"name": "expname", "type": "choice", "values": ["a", "b"]}]}, "cannot be searched"),
    ({"parameters": [{"name": "feature_list", "type": "fixed", "value": 4}]}, "list of values"),
    ({"parameters": [{"name": "lr", "type": "fixed", "value": 1e-4}]}, "every parameter is fixed"),
    ({"parameters": [{"name": "lr", "type": "range", "bounds": [1e-4, 1e-3]},
                     {"name": "lr", "type": "range", "bounds": [1e-4, 1e-3]}]}, "listed twice"),
    ({"params": []}, "unknown top-level key 'params'"),
    ([1, 2], "expected a JSON object"),
    ('{"parameters": [{"name": "lr", "type": "range", "bounds": [NaN, 1]}]}', "NaN is not a valid number"),
])
def test_bad_space_files(tmp_path, doc, message):
    f = write_json(tmp_path / "bad.json", doc)
    with pytest.raises(ConfigError) as err:
        load_search_space(f)
    text = str(err.value)
    assert text.startswith(f"search space {f}: ") and message in text and "\n" not in text


def test_missing_space_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_search_space(tmp_path / "nope.json")


def test_values_checked_against_training_options(tmp_path, tiny):
    _, base = tiny
    f = write_json(tmp_path / "m.json", {"parameters": [
        {"name": "pruning_momentum", "type": "range", "bounds": [0.5, 2.0]}]})
    with pytest.raises(ConfigError, match=r"parameter 'pruning_momentum' value 2.0 is rejected: .*must be in \[0, 1\]"):
        check_against_config(load_search_space(f), str(base))
    f = write_json(tmp_path / "t.json", {"parameters": [
        {"name": "n_layers", "type": "range", "bounds": [2, 3]},
        {"name": "dropout_technique", "type": "fixed", "value": "pruneit"}]})
    with pytest.raises(ConfigError, match="a fixed value is rejected: dropout_technique"):
        check_against_config(load_search_space(f), str(base))


# ---------------------------------------------------------------- command line, outputs, runner

def test_cli_errors_are_one_line(tmp_path, tiny, capsys):
    from neurcomp.config.cli import run_cli

    _, base = tiny
    space = SPACES / "baseline.json"
    common = ["--config", str(base), "--search_space", str(space), "--output_dir", str(tmp_path / "o")]
    assert run_cli(cli.main, common + ["--trials", "0"]) == 2
    assert "error: command line: --trials 0 is invalid" in capsys.readouterr().err
    assert run_cli(cli.main, common + ["--parallel", "0"]) == 2
    assert run_cli(cli.main, ["--config", str(base), "--search_space", str(tmp_path / "x.json"),
                              "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "search space" in err and "file not found" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_missing_ax_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "ax.api.client", None)  # import fails as if not installed
    with pytest.raises(ax_loop.SearchError, match="pip install -r requirements-search.txt"):
        ax_loop.import_ax()


def test_pareto_front_and_best_configs(tmp_path, tiny):
    _, base = tiny
    rec = lambda i, p, r, s="completed": {"index": i, "status": s, "psnr": p, "compression_ratio": r,  # noqa: E731
                                          "parameters": {"n_layers": 2 + i, "features_per_layer": 10 + i}}
    records = {0: rec(0, 30.0, 10.0), 1: rec(1, 25.0, 50.0), 2: rec(2, 20.0, 40.0), 3: rec(3, 35.0, 5.0),
               4: rec(4, None, None, "failed"), 5: rec(5, 18.0, 120.0)}
    assert reports.pareto_front(records, {}) == [3, 0, 1, 5]
    assert reports.pareto_front(records, {"psnr": 24.0}) == [3, 0, 1]
    assert reports.pareto_front(records, {"compression_ratio": 100.0}) == [5]
    best = reports.write_best_configs(tmp_path / "best", records, [10, 100, 1000], {}, str(base), {"lr": 2e-4})
    assert {k: v["trial"] for k, v in best.items()} == {"10": 0, "100": 5}
    text = (tmp_path / "best" / "ratio_100.txt").read_text()
    assert text.startswith("# best PSNR at compression ratio >= 100")
    cfg = parse_config(["--config", str(tmp_path / "best" / "ratio_100.txt")])  # ready to run
    assert (cfg.network.n_layers, cfg.network.features_per_layer, cfg.optim.lr) == (7, 15, 2e-4)
    assert cfg.expname == "best_ratio_100" and cfg.optim.max_pass == 2


FAKE_TRAINING = """
import json, sys, time
from pathlib import Path
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
folder = Path(args["basedir"]) / args["expname"]
width = int(args["features_per_layer"])
if width == 13:
    print("error: data.npy: something went wrong", file=sys.stderr)
    sys.exit(2)
if width == 14:
    time.sleep(30)
(folder / "info.json").write_text(json.dumps({"psnr": 20.0 + width, "compression_ratio": 100.0 / width,
                                              "num_parameters": width * 10, "network_layer_sizes": [3, width, 1]}))
"""


def test_runner_results_failures_and_timeout(tmp_path):
    script = tmp_path / "fake_training.py"
    script.write_text(FAKE_TRAINING)
    runner = TrialRunner("base.txt", tmp_path / "trials", fixed={"lr": 1e-4}, parallel=2, script=script,
                         gpus=["0", "1"])
    assert runner.command(7, {"features_per_layer": 9})[2:] == [
        "--config", "base.txt", "--lr=0.0001", "--features_per_layer=9", f"--basedir={tmp_path / 'trials'}",
        "--expname=trial_7"]
    for i, width in enumerate((12, 13)):
        runner.start(i, {"features_per_layer": width})
    assert sorted(r.device for r in runner.running.values()) == ["0", "1"]  # one GPU each
    results = {}
    while runner.running:
        results.update({r.index: r for r in runner.wait_any(interval=0.05)})
    assert results[0].status == "completed" and results[0].psnr == 32.0 and results[0].num_parameters == 120
    assert results[0].device == "cuda:0 (GPU 0)"  # what the trial saw, and which GPU that was
    assert results[1].status == "failed" and results[1].error == "exit code 2: error: data.npy: something went wrong"
    assert (tmp_path / "trials" / "trial_1" / "train.log").is_file()
    assert failure_reason(tmp_path / "missing.log", 1) == "exit code 1: no output"

    slow = TrialRunner("base.txt", tmp_path / "trials", parallel=1, timeout_s=0.5, script=script)
    slow.start(2, {"features_per_layer": 14})
    (result,) = slow.wait_any(interval=0.05)
    assert result.status == "failed" and result.error == "timed out after 0.5 s" and not slow.running


# ---------------------------------------------------------------- whole searches (real training)

def run_search(argv):
    cli.main([str(a) for a in argv])


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_search_finishes_writes_outputs_and_resumes(tiny):
    from mlflow import MlflowClient

    tmp_path, base = tiny
    space = write_json(tmp_path / "space.json", {"parameters": [
        {"name": "n_layers", "type": "range", "bounds": [2, 3]},
        {"name": "features_per_layer", "type": "range", "bounds": [4, 16]}]})
    out = tmp_path / "search"
    argv = ["--config", base, "--search_space", space, "--output_dir", out, "--method", "random", "--parallel", 2]
    run_search(argv + ["--trials", 3])

    rows = read_csv(out / "trials.csv")
    assert [r["trial"] for r in rows] == ["0", "1", "2"] and all(r["status"] == "completed" for r in rows)
    assert all(r["generation_node"] == "Sobol" for r in rows)
    for r in rows:  # each trial in its own experiment folder, trained with its own settings
        folder = out / "trials" / f"trial_{r['trial']}"
        info = json.loads((folder / "info.json").read_text())
        assert info["psnr"] == pytest.approx(float(r["psnr"]))
        assert (folder / "prediction.vti").is_file()
        assert f"features_per_layer = {r['features_per_layer']}" in (folder / "config.txt").read_text()
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["front"] and pareto["trials_completed"] == 3
    assert {f["trial"] for f in pareto["front"]} == {int(r["trial"]) for r in rows if r["on_front"] == "True"}
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    best = sorted((out / "best_configs").glob("ratio_*.txt"))
    assert best and parse_config(["--config", str(best[0])]).expname.startswith("best_ratio_")

    state = json.loads((out / "search.json").read_text())
    client = MlflowClient(tracking_uri=state["mlflow"]["tracking_uri"])
    parent = state["mlflow"]["parent_run_id"]
    assert client.get_run(parent).info.status == "FINISHED"
    exp = client.get_experiment_by_name("neurcomp")

    def children():
        return client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")

    assert sorted(r.info.run_name for r in children()) == ["trial_0", "trial_1", "trial_2"]
    assert all(r.info.status == "FINISHED" for r in children())

    run_search(argv + ["--trials", 4])  # resume: exactly one more trial
    rows = read_csv(out / "trials.csv")
    assert [r["trial"] for r in rows] == ["0", "1", "2", "3"]
    assert len(children()) == 4 and json.loads((out / "search.json").read_text())["mlflow"]["parent_run_id"] == parent
    run_search(argv + ["--trials", 4])  # nothing left to do
    assert len(read_csv(out / "trials.csv")) == 4

    other = write_json(tmp_path / "other.json", {"parameters": [
        {"name": "n_layers", "type": "range", "bounds": [2, 4]}]})
    with pytest.raises(ConfigError, match="holds a search over another space"):
        run_search(["--config", base, "--search_space", other, "--output_dir", out, "--method", "random"])


@pytest.mark.slow
def test_failed_trials_are_recorded_and_do_not_stop_the_search(tiny):
    tmp_path, base = tiny
    base.write_text(base.read_text().replace("tracking = mlflow", "tracking = none"))
    space = write_json(tmp_path / "space.json", {"parameters": [  # neither volume exists: every trial fails
        {"name": "data", "type": "choice", "values": [str(tmp_path / "gone_a.npy"), str(tmp_path / "gone_b.npy")]}]})
    out = tmp_path / "search"
    with pytest.raises(ax_loop.SearchError, match="all 2 trials failed"):
        run_search(["--config", base, "--search_space", space, "--output_dir", out, "--trials", 2,
                    "--method", "random"])
    rows = read_csv(out / "trials.csv")
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all(r["error"].startswith("exit code 2: error: ") and "gone_" in r["error"] for r in rows)
    assert json.loads((out / "pareto.json").read_text())["front"] == []
    from ax.api.client import Client

    client = Client.load_from_json_file(str(out / "ax_state.json"))
    assert [t.status.name for t in client._experiment.trials.values()] == ["FAILED", "FAILED"]


@pytest.mark.slow
def test_resume_runs_an_interrupted_trial_again(tiny, monkeypatch):
    import search.runner
    from ax.api.client import Client

    tmp_path, base = tiny
    base.write_text(base.read_text().replace("tracking = mlflow", "tracking = none"))
    script = tmp_path / "fake_training.py"
    script.write_text(FAKE_TRAINING)
    monkeypatch.setattr(search.runner, "TRAINING_SCRIPT", script)  # instant trials
    space = write_json(tmp_path / "space.json", {"parameters": [
        {"name": "features_per_layer", "type": "range", "bounds": [15, 40]}]})
    out = tmp_path / "search"
    argv = ["--config", base, "--search_space", space, "--output_dir", out, "--method", "random"]
    run_search(argv + ["--trials", 2])
    # A search stopped while trial 2 trained: Ax has it RUNNING, search.json has no result for it.
    client = Client.load_from_json_file(str(out / "ax_state.json"))
    (params,) = client.get_next_trials(max_trials=1).values()
    client.save_to_json_file(str(out / "ax_state.json"))
    (out / "trials" / "trial_2").mkdir(parents=True)
    (out / "trials" / "trial_2" / "stale.txt").write_text("left by the stopped run")

    run_search(argv + ["--trials", 3])
    rows = read_csv(out / "trials.csv")
    assert [r["trial"] for r in rows] == ["0", "1", "2"] and all(r["status"] == "completed" for r in rows)
    assert int(rows[2]["features_per_layer"]) == params["features_per_layer"]  # the same settings, run again
    assert not (out / "trials" / "trial_2" / "stale.txt").exists()
