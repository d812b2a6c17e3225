"""Console scripts of ``pip install .`` (pyproject.toml): ``neurcomp-train`` and the others run an
entry script's ``main`` through ``config.cli.run_cli``, so an installed command behaves as
``python NeurcompTraining.py`` does (one-line errors, the same exit codes). Each entry script is
imported only when its command runs.
"""

from neurcomp.config.cli import run_cli


def train() -> int:
    from NeurcompTraining import main

    return run_cli(main)


def visualize() -> int:
    from NeurcompVisualization import main

    return run_cli(main)


def quantize() -> int:
    from NeurcompQuantization import main

    return run_cli(main)


def dequantize() -> int:
    from NeurcompDequantization import main

    return run_cli(main)


def search() -> int:
    from NeurcompSearch import main

    return run_cli(main)
