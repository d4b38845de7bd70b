import sys

try:
    from .cli import main
except KeyboardInterrupt:   # a Ctrl-C while Python loads elr: one line, as during any command
    print("elr: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
