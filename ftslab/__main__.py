import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while Python loads the command line
    sys.stderr.write("ftslab: interrupted\n")
    sys.exit(130)

sys.exit(main())
