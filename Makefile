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

.PHONY: setup check-build-tools lock image image-tag run batch serve screenshot test reliability smoke audit clean

# Exact versions with hashes (requirements/, made by `make lock` from pyproject.toml), for CPython
# 3.11 on x86_64 Linux: lock-test.txt is what `make setup` installs here and in CI (CPU TensorFlow
# and the test tools); lock-cpu.txt and lock-gpu.txt are the cluster images' (Dockerfile), one
# TensorFlow each. `make setup LOCK=` installs unpinned from pyproject.toml instead (other platforms).
LOCK ?= requirements/lock-test.txt

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(MAKE) --no-print-directory check-build-tools
ifneq ($(strip $(LOCK)),)
	@$(BIN)/python -c 'import platform, sys; sys.exit(0 if sys.version_info[:2] == (3, 11) and platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64") else "make setup: $(LOCK) is for CPython 3.11 on x86_64 Linux, this is Python %s on %s %s; use python3.11 (make setup PYTHON=python3.11) or install unpinned: make setup LOCK=" % (platform.python_version(), platform.system(), platform.machine()))'
	$(BIN)/python -m pip install --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --no-deps -e .
else
	$(BIN)/python -m pip install -e '.[test]'
endif
	touch $@

# hnswlib ships no wheels (PyPI has only the 0.8.0 sdist, and no maintained fork builds them for
# the 0.8 API), so pip compiles it: say what is missing before pip fails halfway through.
check-build-tools:
	@command -v $${CXX:-c++} >/dev/null 2>&1 || { echo "make setup: hnswlib is compiled at install and needs a C++ compiler: apt-get install g++ (Debian/Ubuntu), dnf install gcc-c++ (Fedora), xcode-select --install (macOS)"; exit 1; }
	@$(BIN)/python -c 'import os, sys, sysconfig; sys.exit(0 if os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else "make setup: hnswlib is compiled at install and needs the headers of Python %d.%d: apt-get install python3-dev (Debian/Ubuntu), dnf install python3-devel (Fedora)" % sys.version_info[:2])'

# Re-resolve the three locks from pyproject.toml (uv from its own tool venv, not a project
# dependency). Pins already in the files are kept unless pyproject.toml needs others; bump them with
# `make lock UPGRADE=--upgrade`. The runtime locks are constrained by lock-test.txt, so every node
# type and CI run the same versions; lock-gpu.txt drops tensorflow-cpu for tensorflow[and-cuda].
LOCK_VENV ?= .venv-lock
UPGRADE ?=
UV_COMPILE = $(LOCK_VENV)/bin/uv pip compile pyproject.toml --python-version 3.11 \
	--python-platform x86_64-unknown-linux-gnu --generate-hashes --custom-compile-command 'make lock' $(UPGRADE)
lock:
	test -x $(LOCK_VENV)/bin/uv || { $(PYTHON) -m venv $(LOCK_VENV) && \
		$(LOCK_VENV)/bin/python -m pip install -q 'uv>=0.9,<1'; }
	$(UV_COMPILE) --extra test -o requirements/lock-test.txt
	$(UV_COMPILE) -c requirements/lock-test.txt -o requirements/lock-cpu.txt
	$(UV_COMPILE) --extra gpu --no-emit-package tensorflow-cpu -c requirements/lock-test.txt -o requirements/lock-gpu.txt

# The cluster images (Dockerfile): REGISTRY/vitrine:<tag>-cpu and -gpu. The tag is the locked Ray
# and a digest of the runtime locks, so a new lock means a new tag; every manifest names it
# (tests/cluster/test_images.py). Set IMAGE to your registry's repository before pushing.
IMAGE ?= REGISTRY/vitrine
RAY_VERSION = $(shell sed -n 's/^ray==\([^ ]*\).*/\1/p' requirements/lock-cpu.txt)
IMAGE_TAG = $(RAY_VERSION)-$(shell cat requirements/lock-cpu.txt requirements/lock-gpu.txt | sha256sum | cut -c1-8)
image-tag:
	@echo $(IMAGE_TAG)
image:
	docker build --build-arg NODE=cpu -t $(IMAGE):$(IMAGE_TAG)-cpu .
	docker build --build-arg NODE=gpu -t $(IMAGE):$(IMAGE_TAG)-gpu .

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

# The README's pictures of the page: the browser test's screenshots, taken against the service that
# `make run` (or `make serve`) keeps up on SERVE_PORT, into docs/img/.
screenshot: setup
	VITRINE_PAGE_URL=http://127.0.0.1:$(SERVE_PORT) VITRINE_SCREENSHOT_DIR=$(abspath docs/img) \
		$(BIN)/python -m pytest tests/serve/test_web_page.py -k screenshots -q

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
