#!/usr/bin/env python
"""Train a Neurcomp network on a volume: python NeurcompTraining.py --config experiment-config-files/quickstart.txt"""

import sys

from config.cli import run_cli
from config.options import build_parser, parse_config


def main(argv=None):
    from training.run import train

    train(parse_config(argv, build_parser("Train a Neurcomp network on a volume.")))


if __name__ == "__main__":
    sys.exit(run_cli(main))
