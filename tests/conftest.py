"""Test-wide settings: float32 on CPU, tests importable as a package root."""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))  # `import oracles`
