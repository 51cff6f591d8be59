# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv, installs dbb_hf, runs the whole method offline on the toy benchmark
#   make test   creates .venv, installs dbb_hf[dev], runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo

.PHONY: install demo test clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/python -c "import timm, torchvision, dbb_hf; print('dbb_hf', dbb_hf.__version__, 'installed')"
	touch $@

demo: install
	$(BIN)/dbb-hf demo --output_dir $(DEMO_DIR)

test: install
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) runs
