"""`python -m tfm.cli ...`: the `tfm` command without its console script."""
import sys

from tfm.cli import main

sys.exit(main())
