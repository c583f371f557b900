# The two commands a newcomer needs:  `make train`  and  `make test`  (`make check`: the fast part).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# MNIST's four IDX files; without a folder the trainer downloads MNIST with torchvision.
MNIST_DIR ?= $(firstword $(wildcard ../shared/datasets/mnist) data/mnist)
MODELS_DIR ?= models
export MNIST_DIR MODELS_DIR

.PHONY: install train serve demo test check lint docs images docker-e2e bench report clean

install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: pip takes these exact builds from the local disk or the index.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[train,serve,test]'
	touch $@

train: install  ## train every step on full MNIST and publish it into $(MODELS_DIR)
	$(PY) -m trainer run --steps all

serve: install  ## serve $(MODELS_DIR) on http://127.0.0.1:8000
	$(PY) -m service --host 127.0.0.1 --port 8000

# `make demo`: the lab page from a fresh clone. Every step trains briefly, DEMO_EPOCHS epochs
# on the first DEMO_LIMIT images of each split (the full run: 15 epochs on all 60,000), into its
# own volume so that it never replaces `make train`'s models; steps already there are kept.
# Without a MNIST folder, the trainer downloads MNIST (an empty MNIST_DIR says so).
DEMO_DIR ?= models-demo
DEMO_EPOCHS ?= 2
DEMO_LIMIT ?= 10000
PORT ?= 8000

demo: install  ## train every step briefly into $(DEMO_DIR), then serve the lab on http://127.0.0.1:$(PORT)/
	@missing=$$($(PY) -c "import sys, volume; done = volume.read_index(sys.argv[1]).steps; \
		print(','.join(s for s in volume.STEP_SLUGS if s not in done))" $(DEMO_DIR)); \
	if [ -n "$$missing" ]; then \
		MNIST_DIR="$(wildcard $(MNIST_DIR))" $(PY) -m trainer run --steps "$$missing" \
			--epochs $(DEMO_EPOCHS) --limit $(DEMO_LIMIT) --quiet --out $(DEMO_DIR) || exit 1; \
	fi
	@echo; echo "  The lab: http://127.0.0.1:$(PORT)/   (Ctrl-C stops it)"; echo
	MODELS_DIR=$(DEMO_DIR) $(PY) -m service --host 127.0.0.1 --port $(PORT)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: install lint  ## lint, type-check and run the whole test suite
	$(PY) -m pytest

# The inner loop while changing the code: what `make test` runs less the tests marked slow
# (those that train, drive a browser or run for more than a few seconds) and docker.
check: install lint  ## lint, type-check and run the tests that need no training or browser
	$(PY) -m pytest -m "not slow and not docker"

docs: install  ## build the docs site into build/site (tests/test_docs.py builds it with --strict)
	$(PY) -m mkdocs build --strict

report: install  ## regenerate reports/REPORT.md from the committed metrics
	$(PY) -m trainer report

bench: install  ## the CPU benchmarks (about 45 minutes); on a GPU also run bench/train_steps.py
	$(PY) bench/train_speed.py
	$(PY) bench/serve.py
	$(PY) bench/preprocess.py
	$(PY) bench/peers.py

# OFFLINE=1: where the engine reaches no image registry (a debootstrapped base, wheels from the host).
OFFLINE ?= 0
images:  ## build both images under docker-compose.yml's names (OFFLINE=1 without a registry)
	OFFLINE=$(OFFLINE) bash docker/build-images.sh

docker-e2e: install  ## follow docs/docker.md on a real engine, offline, with Compose v2 and 1.29
	bash tests/docker/e2e.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
