"""Trial execution: each trial is one ``NeurcompTraining.py`` process in its own experiment folder.

Trial ``n`` trains into ``<output_dir>/trials/trial_<n>/`` (config.txt, info.json, checkpoint, .vti,
and ``train.log`` with the process's output). Up to ``parallel`` processes run at once; when several
GPUs are visible each process gets its own through CUDA_VISIBLE_DEVICES. A process that exits
non-zero, times out, or leaves no usable info.json is a failed trial, with the reason taken from
its log; it never stops the search.

A trial pinned to a GPU sees it as cuda:0; its record names both (``cuda:0 (GPU 3)``). More
parallel trials than GPUs share them: each trial holds its own copy of the volume and compiles its
own step, so device memory adds up (``sharing_note`` says so when the search starts).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from neurcomp.search.space import overrides

REPO = Path(__file__).resolve().parents[1]
TRAINING_SCRIPT = REPO / "NeurcompTraining.py"
LOG_NAME = "train.log"


@dataclass
class TrialResult:
    index: int
    parameters: dict
    status: str  # "completed" or "failed"
    folder: str
    seconds: float
    psnr: float | None = None
    compression_ratio: float | None = None
    num_parameters: int | None = None
    network_layer_sizes: list | None = None
    device: str = ""
    error: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class _Running:
    index: int
    parameters: dict
    process: subprocess.Popen
    log: object
    folder: Path
    started: float
    device: str | None = None


def visible_gpus(device_option: str = "auto") -> list[str]:
    """GPU ids to pin trials to: empty unless training may use CUDA and a GPU is visible."""
    if device_option == "cpu":
        return []
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable CUDA means no pinning
        return []
    if count < 1:
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    ids = [d.strip() for d in env.split(",") if d.strip()] if env else [str(i) for i in range(count)]
    return ids[:count]


def sharing_note(parallel: int, gpus: list[str]) -> str | None:
    """One line when parallel trials must share GPUs (each brings its own volume copy and compile)."""
    if not gpus or parallel <= len(gpus):
        return None
    per = math.ceil(parallel / len(gpus))
    return (f"note: --parallel {parallel} on {len(gpus)} GPU(s): up to {per} trials share each GPU, each with its "
            "own copy of the volume and its own compiled step; lower --parallel if trials run out of memory")


def device_label(gpu: str | None, shared: bool = False) -> str:
    """How a trial's device is recorded: what the trial saw (cuda:0) and which GPU that was."""
    if gpu is None:
        return ""
    return f"cuda:0 (GPU {gpu}{', shared' if shared else ''})"


def failure_reason(log_path: Path, returncode: int | None) -> str:
    """The line that explains a failed training: its ``error:`` line, else the last line of its log."""
    lines: list[str] = []
    try:
        text = Path(log_path).read_text(errors="replace")
        lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    except OSError:
        pass
    errors = [ln for ln in lines if ln.startswith("error:")]
    line = errors[-1] if errors else (lines[-1] if lines else "no output")
    prefix = f"exit code {returncode}: " if returncode is not None else ""
    return (prefix + line)[:500]


class TrialRunner:
    """Starts trial processes and collects their results."""

    def __init__(self, base_config: str, trials_dir: Path, fixed: dict | None = None, extra_args: list | None = None,
                 parallel: int = 1, gpus: list[str] | None = None, timeout_s: float = 0, cwd: str | None = None,
                 python: str = sys.executable, script: Path | None = None):
        self.base_config = str(base_config)
        self.trials_dir = Path(trials_dir)
        self.fixed = dict(fixed or {})
        self.extra_args = list(extra_args or [])
        self.parallel = max(1, int(parallel))
        self.gpus = list(gpus or [])
        self.timeout_s = float(timeout_s or 0)
        self.cwd = cwd or os.getcwd()
        self.python = python
        self.script = str(script or TRAINING_SCRIPT)
        self.running: dict[int, _Running] = {}

    @property
    def free_slots(self) -> int:
        return self.parallel - len(self.running)

    def folder(self, index: int) -> Path:
        return self.trials_dir / f"trial_{index}"

    def command(self, index: int, parameters: dict) -> list[str]:
        return [self.python, self.script, "--config", self.base_config,
                *overrides(self.fixed), *overrides(parameters),
                f"--basedir={self.trials_dir}", f"--expname=trial_{index}", *self.extra_args]

    def _pick_gpu(self) -> str | None:
        if not self.gpus:
            return None
        load = {g: 0 for g in self.gpus}
        for r in self.running.values():
            if r.device in load:
                load[r.device] += 1
        return min(self.gpus, key=lambda g: load[g])  # a free GPU when there is one

    def start(self, index: int, parameters: dict) -> None:
        folder = self.folder(index)
        if folder.exists():  # a trial interrupted by a stopped search starts over
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        env = dict(os.environ)
        gpu = self._pick_gpu()
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        env["PYTHONUNBUFFERED"] = "1"
        log = open(folder / LOG_NAME, "w")
        cmd = self.command(index, parameters)
        log.write("$ " + " ".join(cmd) + (f"\n# CUDA_VISIBLE_DEVICES={gpu}" if gpu is not None else "") + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.running[index] = _Running(index, dict(parameters), proc, log, folder, time.monotonic(), gpu)

    def _finish(self, r: _Running, returncode: int | None, timed_out: bool = False) -> TrialResult:
        r.log.close()
        seconds = time.monotonic() - r.started
        result = TrialResult(index=r.index, parameters=r.parameters, status="failed", folder=str(r.folder),
                             seconds=round(seconds, 2), device=device_label(r.device, self.parallel > len(self.gpus)))
        if timed_out:
            result.error = f"timed out after {self.timeout_s:g} s"
            return result
        if returncode != 0:
            result.error = failure_reason(r.folder / LOG_NAME, returncode)
            return result
        try:
            info = json.loads((r.folder / "info.json").read_text())
            psnr, ratio = float(info["psnr"]), float(info["compression_ratio"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            result.error = f"training exited 0 but left no usable info.json ({exc})"
            return result
        if not (math.isfinite(psnr) and math.isfinite(ratio)):
            result.error = f"non-finite result: psnr {psnr}, compression_ratio {ratio}"
            return result
        result.status = "completed"
        result.psnr, result.compression_ratio = psnr, ratio
        result.num_parameters = info.get("num_parameters")
        result.network_layer_sizes = info.get("network_layer_sizes")
        return result

    def poll(self) -> list[TrialResult]:
        """Results of the processes that ended since the last call (timed-out ones are killed)."""
        done = []
        for index, r in list(self.running.items()):
            rc = r.process.poll()
            if rc is None and self.timeout_s and time.monotonic() - r.started > self.timeout_s:
                self._kill(r)
                done.append(self._finish(r, None, timed_out=True))
                del self.running[index]
            elif rc is not None:
                done.append(self._finish(r, rc))
                del self.running[index]
        return done

    def wait_any(self, interval: float = 0.5) -> list[TrialResult]:
        """Block until at least one running trial ends; returns the ended ones."""
        while self.running:
            done = self.poll()
            if done:
                return done
            time.sleep(interval)
        return []

    @staticmethod
    def _kill(r: _Running, grace: float = 10.0) -> None:
        try:
            os.killpg(r.process.pid, signal.SIGINT)  # training saves an interrupt checkpoint
            r.process.wait(timeout=grace)
        except (subprocess.TimeoutExpired, ProcessLookupError, PermissionError):
            try:
                os.killpg(r.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            r.process.wait()

    def stop_all(self) -> None:
        """Interrupt every running trial (the search was stopped); they stay pending for a resume."""
        for r in self.running.values():
            self._kill(r)
            r.log.close()
        self.running.clear()
