"""Run an entry script's main function, turning user errors into one line and an exit code."""

import sys

from neurcomp.config.errors import NeurcompError


def run_cli(main, argv=None) -> int:
    """Call ``main(argv)``; a NeurcompError prints ``error: <message>`` to stderr (no traceback).

    A stop (Ctrl-C, or SIGTERM, which training turns into the same exception) exits 130 for SIGINT
    and 143 for SIGTERM, as a shell reports a process those signals ended; training has then already
    said in one line where its checkpoint is (``reported``).
    """
    try:
        main(argv)
    except NeurcompError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        code = int(getattr(exc, "exit_code", 130))
        if not getattr(exc, "reported", False):
            print("interrupted" if code == 130 else "terminated", file=sys.stderr)
        return code
    return 0
