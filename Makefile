# One command each: `make run` (the app on the default model) and `make test` (all tests).
# Both create .venv and install everything on a fresh clone. CPU torch comes from torch==2.13.0.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.qtui-installed

.PHONY: run test lint format bench clean-venv llamacpp-native llamacpp-prebuilt

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24.1"
	$(BIN)/python -m pip install -q "torch==2.13.0"
	# DISABLE_CUDA=1: hqq (an sdist) otherwise tries to build CUDA kernels while installing
	DISABLE_CUDA=1 $(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/qtui

test: $(STAMP)
	$(BIN)/ruff check engine qtui tests bench
	$(BIN)/ruff format --check engine qtui tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check --fix engine qtui tests bench
	$(BIN)/ruff format engine qtui tests bench

bench: $(STAMP)
	$(BIN)/python bench/decode.py

# llama.cpp compiled for this CPU (GGML_NATIVE) from xllamacpp's sdist, replacing the prebuilt wheel
# in .venv (same version); llama.cpp columns then say "native build". ~75 min on 2 cores, needs a C++
# compiler and cmake. llguidance and BoringSSL would be downloaded from GitHub during the build: off.
# Back to the prebuilt wheel: make llamacpp-prebuilt.
XLLAMACPP_VERSION = $$($(BIN)/python -c "from importlib.metadata import version; print(version('xllamacpp'))")
llamacpp-native: $(STAMP)
	CMAKE_ARGS="-DLLAMA_LLGUIDANCE=OFF -DLLAMA_BUILD_BORINGSSL=OFF -DLLAMA_OPENSSL=OFF" \
	  $(BIN)/python -m pip install --no-deps --force-reinstall --no-binary xllamacpp "xllamacpp==$(XLLAMACPP_VERSION)"
	$(BIN)/python -c "from engine import llamacpp; print('xllamacpp', llamacpp.version(), llamacpp.build())"

llamacpp-prebuilt: $(STAMP)
	$(BIN)/python -m pip install --no-deps --force-reinstall --only-binary xllamacpp "xllamacpp==$(XLLAMACPP_VERSION)"
	$(BIN)/python -c "from engine import llamacpp; print('xllamacpp', llamacpp.version(), llamacpp.build())"

clean-venv:
	rm -rf $(VENV)
