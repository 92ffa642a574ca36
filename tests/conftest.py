"""Test-wide settings: float32 on CPU, tests importable as a package root."""

import os
import sys

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))  # `import oracles`


@pytest.fixture(scope="session")
def train_env(tmp_path_factory):
    """The environment of trainer processes started by tests (`runs.env`): one compilation cache per session."""
    import runs

    return runs.env(tmp_path_factory.mktemp("jax_cache"))
