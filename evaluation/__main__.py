"""`python -m evaluation ...`: see evaluation/cli.py and `python -m evaluation --help`."""

import sys

from evaluation.cli import main

sys.exit(main())
