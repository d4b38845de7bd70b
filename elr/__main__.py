import os
import signal


def _interrupted_while_loading(signum, frame):
    # Python reports a KeyboardInterrupt raised inside an import's lock callback as "Exception ignored in ..."
    # and loads on, so a Ctrl-C would print a traceback and the command would run anyway. Until elr and torch
    # have loaded nothing is written, so the process ends at once, in one line.
    os.write(2, b"elr: interrupted\n")
    os._exit(130)


signal.signal(signal.SIGINT, _interrupted_while_loading)
from .cli import main  # noqa: E402
from .training import data  # noqa: E402,F401  (torch: most of the start-up's seconds, before main's first line)

signal.signal(signal.SIGINT, signal.default_int_handler)   # from here on, main's own handling of a Ctrl-C
raise SystemExit(main())
