#!/usr/bin/env python
"""Predict a volume from a trained network: python NeurcompVisualization.py --config experiments/<expname>/config.txt"""

import sys

from neurcomp.config.cli import run_cli


def main(argv=None):
    from neurcomp.training.visualize import visualize_main

    visualize_main(argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
