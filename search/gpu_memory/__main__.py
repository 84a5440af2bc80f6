"""`python -m search.gpu_memory --config JSON`: measure one trial shape (the driver runs it)."""

from __future__ import annotations

import sys

from search.gpu_memory.probe import main

sys.exit(main())
