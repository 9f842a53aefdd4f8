"""Where things are, for every test: the repository root and the shipped configs."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
DEBUG_CONFIG = CONFIGS / "debug.yaml"
