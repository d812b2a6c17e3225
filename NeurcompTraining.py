#!/usr/bin/env python
"""Train a Neurcomp network on a volume: python NeurcompTraining.py --config experiment-config-files/quickstart.txt

Ctrl-C or SIGTERM saves a checkpoint between two steps (exit 130 / 143); ``--resume <checkpoint>``
continues that run exactly, ``--checkpoint_path <checkpoint>`` starts a new run from its weights.
"""

import sys

from neurcomp.config.cli import run_cli
from neurcomp.config.options import build_parser, parse_config


def main(argv=None):
    from neurcomp.training.run import train

    train(parse_config(argv, build_parser("Train a Neurcomp network on a volume.")))


if __name__ == "__main__":
    sys.exit(run_cli(main))
