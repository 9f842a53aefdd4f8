"""`python -m cluster MODE ...` == `./launch.sh MODE ...` (see cluster/cli.py)."""

import sys

from cluster.cli import main

sys.exit(main())
