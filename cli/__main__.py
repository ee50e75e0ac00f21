"""`python -m cli ...` runs the `thinkrec` command (what accelerate launch and the test servers use)."""

import sys

from cli.main import main

sys.exit(main())
