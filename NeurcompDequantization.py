"""Decode a compressed Neurcomp file back into a volume (and compare with the ground truth).

    python NeurcompDequantization.py --compressed_file F [--volume GT] [--decompressed_file OUT.vti]
                                     [--metrics_json metrics.json] [--region X0 X1 Y0 Y1 Z0 Z1]
                                     [--resolution X Y Z]

The network is rebuilt from the file alone; the output has the original shape and spacing, in
physical units, or is the box ``--region`` (its true origin) or the field sampled at
``--resolution`` (spacing scaled to keep the box). A file with an error bound gets its
corrections; with ``--volume`` the bound is reported and whether it held. Options: the shared ones (for reading GT: --data_key, --raw_shape ...) plus the
"decompression" group (quantization/cli.py).
"""

import sys

from neurcomp.config.cli import run_cli
from neurcomp.config.options import build_parser
from neurcomp.quantization.cli import add_dequantization_arguments, dequantize_main


def main(argv=None):
    parser = add_dequantization_arguments(build_parser("Decode a compressed Neurcomp file into a volume"))
    dequantize_main(argv, parser)


if __name__ == "__main__":
    sys.exit(run_cli(main))
