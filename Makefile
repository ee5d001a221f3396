# Two commands matter: `make run` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The Fashion-MNIST copy next to the checkout, unless the caller points elsewhere.
FASHION_MNIST_DIR ?= $(abspath $(wildcard ../shared/datasets/fashion-mnist))
export FASHION_MNIST_DIR
export VITRINE_STORAGE ?= $(abspath .vitrine)
export RAY_AUTH_MODE ?= disabled
export TF_CPP_MIN_LOG_LEVEL ?= 2
# Photo banks for training (tune/data/photo_bank.py) are cached here, with the run outputs.
export VITRINE_CACHE_DIR ?= $(abspath .vitrine/cache)
PYTEST_ARGS ?=

.PHONY: setup run batch serve test reliability smoke audit clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

CATALOGUE ?= $(VITRINE_STORAGE)/catalogues/fashion-mnist-train

SERVE_PORT ?= 8000
# The grid `make run` trains; tune/grids/photo-training.yaml trains on product photos too.
GRID ?= tune/grids/default.yaml

# Train the default grid (report + exported model), export the demo catalogue, embed it,
# build the HNSW index, measure retrieval, then serve it: the last step prints the page's URL
# and keeps the service up until Ctrl-C (`make batch` stops before serving).
run: batch
	$(BIN)/vitrine serve --port $(SERVE_PORT)

batch: setup
	$(BIN)/vitrine tune --grid $(GRID)
	$(BIN)/vitrine export-catalogue --dataset fashion-mnist --split train --out $(CATALOGUE)
	$(BIN)/vitrine embed --catalogue $(CATALOGUE)
	$(BIN)/vitrine build-index
	$(BIN)/vitrine evaluate-search

serve: setup
	$(BIN)/vitrine serve --port $(SERVE_PORT)

smoke: setup
	$(BIN)/vitrine tune --grid $(GRID) --smoke-test

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fault-injection tests alone (also part of `make test`), verbose, with what each one saw;
# the output is what docs/RELIABILITY.md quotes.
reliability: setup
	mkdir -p $(VITRINE_STORAGE)
	$(BIN)/python -m pytest -m fault -v -s 2>&1 | tee $(VITRINE_STORAGE)/reliability-last-run.txt | \
		grep -E '^(tests/|PASSED|FAILED|cluster:|Classifier:|Search:|outcome:|node loss:|grid resume:|=+ .* in )'

# Vulnerability audit of what .venv resolved to (pip-audit, from its own tool venv: not a project
# dependency). Findings fail unless .ci/audit-ignore.txt accepts them with a reason; an
# unreachable vulnerability service prints "audit skipped: service unreachable" and passes.
AUDIT_VENV ?= .venv-audit
audit: setup
	test -x $(AUDIT_VENV)/bin/pip-audit || { $(PYTHON) -m venv $(AUDIT_VENV) && \
		$(AUDIT_VENV)/bin/python -m pip install -q 'pip-audit>=2.7,<3'; }
	$(AUDIT_VENV)/bin/python .ci/audit.py --venv $(VENV) --ignore .ci/audit-ignore.txt

clean:
	rm -rf .vitrine .pytest_cache
