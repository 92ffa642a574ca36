# `make test`: fresh .venv with the package, its test extras and the PyTorch oracles, then lint + tests.
# `make demo`: fresh .venv with the package, then train the demo preset (`python -m train`).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
PURELIB = $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

.PHONY: venv oracles test lint demo clean

venv:
	rm -rf $(VENV)
	python3 -m venv $(VENV)

# Oracles exactly as ../shared/reference/oracles.md: torch pinned and FIRST (2.13.0 is the local CPU
# build; anything else pulls CUDA wheels), WeSpeaker's model code and torchaudio without their
# dependencies, torchaudio's CUDA-linked native libraries removed (its kaldi.fbank is pure Python).
oracles:
	$(PIP) install torch==2.13.0
	$(PIP) install --no-deps wespeaker-unofficial==0.0.2 torchaudio==2.11.0
	rm -f $(PURELIB)/torchaudio/lib/*.so

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# jax2onnx (ONNX export) without its declared dependencies: see the `onnx` extra in pyproject.toml.
test: venv
	$(MAKE) oracles
	$(PIP) install -e '.[test,onnx]'
	$(PIP) install --no-deps jax2onnx==0.17.1
	$(MAKE) lint
	$(PY) -m pytest

demo: venv
	$(PIP) install -e .
	$(PY) -m train

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
