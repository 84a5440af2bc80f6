import sys

from cxr_tune.cli import main

sys.exit(main())
