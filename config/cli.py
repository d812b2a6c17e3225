"""Run an entry script's main function, turning user errors into one line and an exit code."""

import sys

from config.errors import NeurcompError


def run_cli(main, argv=None) -> int:
    """Call ``main(argv)``; a NeurcompError prints ``error: <message>`` to stderr (no traceback)."""
    try:
        main(argv)
    except NeurcompError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
