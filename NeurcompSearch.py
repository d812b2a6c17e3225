#!/usr/bin/env python
"""Multi-objective hyperparameter search (PSNR and compression ratio) with Ax:

python NeurcompSearch.py --config experiment-config-files/quickstart.txt \
    --search_space experiment-config-files/search_spaces/baseline.json --trials 20 --output_dir experiments/search
"""

import sys

from neurcomp.config.cli import run_cli


def main(argv=None):
    from neurcomp.search.cli import main as search_main

    search_main(argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
