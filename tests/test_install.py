"""``pip install .`` (pyproject.toml): the five console scripts, offline, outside the repository.

The slow tests build a fresh virtual environment that sees this interpreter's packages (so torch
is not downloaded), install the project with ``--no-deps --no-build-isolation --no-index`` (no
network) from a copy holding only what pyproject.toml names, and run the installed commands from a
folder outside the repository.
"""

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from tests.test_architecture import PACKAGES

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

COMMANDS = {"neurcomp-train": "NeurcompTraining", "neurcomp-visualize": "NeurcompVisualization",
            "neurcomp-quantize": "NeurcompQuantization", "neurcomp-dequantize": "NeurcompDequantization",
            "neurcomp-search": "NeurcompSearch"}


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_pyproject_installs_every_package_and_entry_script():
    project = pyproject()
    setuptools = project["tool"]["setuptools"]
    # every package folder installs inside the one namespace: config/ as neurcomp.config, ...
    assert setuptools["package-dir"] == {f"neurcomp.{p}": p for p in PACKAGES}
    folders = {".".join(("neurcomp", *init.parent.relative_to(REPO).parts))
               for p in PACKAGES for init in (REPO / p).rglob("__init__.py")}
    assert set(setuptools["packages"]) == folders | {"neurcomp"}
    entry_scripts = {p.stem for p in REPO.glob("Neurcomp*.py")}
    assert set(setuptools["py-modules"]) == entry_scripts
    assert set(COMMANDS.values()) == entry_scripts
    scripts = project["project"]["scripts"]
    assert set(scripts) == set(COMMANDS)
    from neurcomp import commands

    for command, target in scripts.items():
        module, func = target.split(":")
        assert module == "neurcomp.commands" and callable(getattr(commands, func)), command
    dynamic = setuptools["dynamic"]
    assert dynamic["dependencies"]["file"] == ["requirements.txt"]
    assert "torch>=2.1" in (REPO / "requirements.txt").read_text().split()


def test_a_notebooks_own_config_and_datasets_do_not_shadow_ours(tmp_path):
    """A folder with its own config.py and a `datasets` package (HuggingFace's name) imports both
    beside ours: the project imports only through the neurcomp namespace."""
    (tmp_path / "config.py").write_text("MINE = True\n")
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "__init__.py").write_text("MINE = True\n")
    code = ("import config, datasets; import neurcomp.training.run, neurcomp.compressors.api; "
            "from neurcomp.config.options import build_parser; build_parser(); "
            "import neurcomp.datasets.marschner_lobb; assert config.MINE and datasets.MINE; print('ok')")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_console_script_errors_are_one_line(monkeypatch, capsys):
    from neurcomp import commands

    monkeypatch.setattr(sys, "argv", ["neurcomp-train", "--max_pass", "0"])
    assert commands.train() == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "max_pass" in err


def build_copy(dest: Path) -> Path:
    """Copy what pyproject.toml names (modules, packages, readme, license, requirement files)."""
    dest.mkdir(parents=True)
    project = pyproject()
    setuptools = project["tool"]["setuptools"]
    names = ["pyproject.toml", project["project"]["readme"], *project["project"]["license-files"],
             *(f"{m}.py" for m in setuptools["py-modules"])]
    names += [f for spec in (setuptools["dynamic"]["dependencies"],
                             *setuptools["dynamic"]["optional-dependencies"].values()) for f in spec["file"]]
    for name in names:
        shutil.copy2(REPO / name, dest / name)
    for folder in ("neurcomp", *setuptools["package-dir"].values()):
        shutil.copytree(REPO / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__", "*.npy"))
    return dest


def make_venv(path: Path) -> Path:
    """A venv seeing this interpreter's packages; without its own pip and setuptools, whose bundled
    versions would hide the installed (newer) setuptools. Inside a venv, --system-site-packages
    reaches the base interpreter only, so this interpreter's site-packages go in a .pth file too."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(path)], check=True)
    python = path / ("Scripts" if os.name == "nt" else "bin") / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    ours = {*site.getsitepackages(), sysconfig.get_paths()["purelib"]}
    (Path(purelib) / "outer_site_packages.pth").write_text("\n".join(sorted(ours)) + "\n")
    return python


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "OMP_NUM_THREADS": "1"}


def run(cmd, cwd, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=clean_env(), capture_output=True, text=True,
                          timeout=timeout)


def pip_install(python: Path, *target, cwd) -> None:
    proc = run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", *target], cwd)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.mark.slow
def test_pip_install_gives_working_commands_outside_the_repository(tmp_path):
    source = build_copy(tmp_path / "src")  # a copy: an in-tree build writes build/ and *.egg-info
    python = make_venv(tmp_path / "venv")
    pip_install(python, ".", cwd=source)
    shutil.rmtree(source)  # the installed commands must not need the source tree
    bindir = python.parent
    work = tmp_path / "work"
    work.mkdir()
    # the search starts trials with `python <site-packages>/NeurcompTraining.py` (search.runner)
    where = run([python, "-c", "import neurcomp.config, neurcomp.datasets, NeurcompTraining; "
                 "print(neurcomp.config.__file__); print(neurcomp.datasets.__file__); "
                 "from neurcomp.search.runner import TRAINING_SCRIPT as t; assert t.is_file(); print(t)"], work)
    assert where.returncode == 0, where.stderr
    assert all(Path(line).is_relative_to(tmp_path / "venv") for line in where.stdout.split()), where.stdout
    for command in COMMANDS:
        assert (bindir / command).is_file(), command
    helped = run([bindir / "neurcomp-train", "--help"], work)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: neurcomp-train"), helped.stderr
    helped = run([bindir / "neurcomp-search", "--help"], work)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: neurcomp-search"), helped.stderr
    refused = run([bindir / "neurcomp-train", "--max_pass", "0"], work)
    assert refused.returncode == 2 and refused.stderr.startswith("error: ") and "Traceback" not in refused.stderr
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (12, 14, 16)), indexing="ij")
    np.save(work / "tiny.npy", (np.sin(2 * x) * np.cos(3 * y) + z).astype(np.float32))
    trained = run([bindir / "neurcomp-train", "--data", "tiny.npy", "--expname", "installed", "--max_pass", "1",
                   "--min_steps", "0", "--tracking", "none", "--quiet", "true", "--compile", "off",
                   "--batch_size", "16", "--compression_ratio", "10"], work)
    assert trained.returncode == 0, trained.stderr[-2000:]
    out = work / "experiments" / "installed"
    assert {"checkpoint.pt", "config.txt", "info.json", "prediction.vti"} <= {p.name for p in out.iterdir()}


@pytest.mark.slow
def test_editable_install_runs_the_working_copy(tmp_path):
    source = build_copy(tmp_path / "src")
    python = make_venv(tmp_path / "venv")
    pip_install(python, "-e", ".", cwd=source)
    work = tmp_path / "work"
    work.mkdir()
    where = run([python, "-c", "import neurcomp.config, NeurcompTraining; print(neurcomp.config.__file__); "
                 "print(NeurcompTraining.__file__)"], work)
    assert where.returncode == 0, where.stderr
    assert all(Path(line).is_relative_to(source) for line in where.stdout.split()), where.stdout
    helped = run([python.parent / "neurcomp-visualize", "--help"], work)
    assert helped.returncode == 0 and "--resolution" in helped.stdout, helped.stderr


CONDA_NAMES = {"torch": "pytorch", "matplotlib": "matplotlib-base", "vtk": "vtk-base"}


@pytest.mark.parametrize("name,variant", [("environment.yml", "pytorch-gpu"), ("environment-cpu.yml", "pytorch-cpu")])
def test_conda_environments_are_conda_forge_only_and_follow_the_requirements(name, variant):
    """No solver here to check them (conda is absent), so at least: one channel, the right PyTorch
    build, and every runtime and test requirement with its lower bound."""
    yaml = pytest.importorskip("yaml")
    from packaging.version import Version

    env = yaml.safe_load((REPO / name).read_text())
    assert env["channels"] == ["conda-forge", "nodefaults"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert variant in conda and "pytorch-cuda" not in conda
    assert not any(d.startswith("pytorch") and "=" in d and ">=" not in d for d in conda), "PyTorch is capped"
    bounds = dict(d.split(">=") for d in conda if ">=" in d)
    for req_file in ("requirements.txt", "requirements-dev.txt"):
        for line in (REPO / req_file).read_text().splitlines():
            req = line.split("#")[0].strip()
            if not req:
                continue
            package, bound = req.split(">=")
            ours = bounds.get(CONDA_NAMES.get(package, package))
            assert req in pip or (ours and Version(ours) >= Version(bound)), (name, req)
