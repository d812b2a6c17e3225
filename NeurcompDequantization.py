"""Decode a compressed Neurcomp file back into a volume (and compare with the ground truth).

    python NeurcompDequantization.py --compressed_file F [--volume GT] [--decompressed_file OUT.vti]
                                     [--metrics_json metrics.json]

The network is rebuilt from the file alone; the output has the original shape and spacing, in
physical units. Options: the shared ones (for reading GT: --data_key, --raw_shape ...) plus the
"decompression" group (quantization/cli.py).
"""

import sys

from config.cli import run_cli
from config.options import build_parser
from quantization.cli import add_dequantization_arguments, dequantize_main


def main(argv=None):
    parser = add_dequantization_arguments(build_parser("Decode a compressed Neurcomp file into a volume"))
    dequantize_main(argv, parser)


if __name__ == "__main__":
    sys.exit(run_cli(main))
