import sys

try:
    from ftslab.cli.entry import main
except KeyboardInterrupt:  # Ctrl-C while Python loads the command line
    sys.stderr.write("ftslab: interrupted\n")
    sys.exit(130)

sys.exit(main())
