import sys

try:
    from imagetool.cli.main import entry
except KeyboardInterrupt:       # Ctrl-C while Python loads the CLI: no traceback
    sys.stderr.write("imagetool: interrupted\n")
    sys.exit(130)

entry()
