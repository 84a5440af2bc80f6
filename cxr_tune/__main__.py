import sys

from cxr_tune.cli import run

sys.exit(run())
