"""`python -m clinsum`: how the rules call the stages (it works in any environment that has the
dependencies, with PYTHONPATH pointing at this checkout's workflow/ folder; see common.smk)."""

import sys

from .cli import main

sys.exit(main())
