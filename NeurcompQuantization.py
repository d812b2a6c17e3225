"""Quantize a trained Neurcomp network into a compressed file.

    python NeurcompQuantization.py --config experiments/<exp>/config.txt --filename <name> --quant_bits <B>

Options: the shared ones (config/options.py) plus the "compressed file" group (quantization/cli.py).
"""

import sys

from config.cli import run_cli
from config.options import build_parser
from quantization.cli import add_quantization_arguments, quantize_main


def main(argv=None):
    parser = add_quantization_arguments(build_parser("Quantize a trained Neurcomp network into a compressed file"))
    quantize_main(argv, parser)


if __name__ == "__main__":
    sys.exit(run_cli(main))
