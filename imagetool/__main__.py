import sys

try:
    from imagetool.cli.main import entry
    # Inside the try too: a SIGINT that came in the last moments of the
    # import is raised at entry's first instruction, before its own handling.
    entry()
except KeyboardInterrupt:       # Ctrl-C while Python loads the CLI: no traceback
    sys.stderr.write("imagetool: interrupted\n")
    sys.exit(130)
