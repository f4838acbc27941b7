# Two commands on a fresh machine: `make run` and `make test`. Both bootstrap .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-latest lock tools node lint unit schemas bench soak clean up

# Installs come from requirements.lock: every direct and transitive dependency pinned with
# hashes, so a fresh clone installs exactly what passed CI. Upgrading is a deliberate commit:
# `make lock` (see docs/operations.md, "Upgrading dependencies").
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --disable-pip-version-check --require-hashes --no-deps -r requirements.lock
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

## run: start the embedded stack and the demo (a candidate that degrades and is killed)
run: $(STAMP)
	$(BIN)/rollout demo

## up: start the embedded stack in the foreground (Ctrl-C stops all)
up: $(STAMP)
	$(BIN)/rollout up

## test: lint, then the whole suite (unit, integration against a real nats-server, slow fault tests)
# Two pytest workers (pytest-xdist), one test file per worker at a time (--dist loadfile keeps a
# file's module-scoped stack in one process): most of the suite waits on servers and child
# processes, so two workers on two cores halve the time. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: $(STAMP) tools node lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# Two checkers from Debian that some tests run: promtool (prometheus) checks the /metrics
# exposition, docker-compose validates compose/docker-compose.yml without an engine.
APT_INSTALL = apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq
tools:
	@command -v promtool >/dev/null || { $(APT_INSTALL) prometheus >/dev/null; } || echo "warning: could not install promtool (Debian package prometheus); the metrics tests will fail" >&2
	@command -v docker-compose >/dev/null || { $(APT_INSTALL) docker-compose >/dev/null; } || echo "warning: could not install docker-compose; the compose tests will fail" >&2

# npm packages some tests run, installed exactly as their package-lock.json pins them (npm ci,
# no install scripts): the Node.js example service (docs/examples/node) and the contract
# checks with the official AsyncAPI parser and ajv (tests/asyncapi).
NODE_PACKAGES := docs/examples/node tests/asyncapi
node: $(addsuffix /node_modules/.installed,$(NODE_PACKAGES))
%/node_modules/.installed: %/package.json %/package-lock.json
	cd $* && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check engine consumers events tests bench

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

## schemas: regenerate docs/schemas/ from the event Structs
schemas: $(STAMP)
	$(BIN)/rollout schemas --out docs/schemas

## bench: every benchmark; prints a table, writes bench/results/latest.json and docs/benchmarks.md
bench: $(STAMP)
	$(BIN)/python -m bench.run

## soak: 10 minutes of canary_stats + rollback at 80% of measured capacity (memory and lag
## sampled, bench/results/soak.json), then the fault tests at scale 10 (not part of make test)
soak: $(STAMP)
	$(BIN)/python -m bench.soak

## test-latest: the suite on the NEWEST versions pyproject.toml allows (not the lock), in
## .venv-latest. It may fail when an upstream release breaks something: that is its job.
LATEST := .venv-latest
test-latest: tools node
	rm -rf $(LATEST) && $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet --upgrade --group build --group test -e '.[all]'
	$(LATEST)/bin/python -m pip list --format=freeze > $(LATEST)/versions.txt
	$(LATEST)/bin/ruff check engine consumers events tests bench
	$(LATEST)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

## lock: re-resolve requirements.lock to the newest allowed versions (then run make test
## and commit the lock on its own, with what changed in the message)
UV_VERSION := 0.13.9
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check 'uv==$(UV_VERSION)'
	$(BIN)/uv pip compile pyproject.toml --all-extras --group build --group test --group bench \
		--generate-hashes --universal --python-version 3.11 --upgrade -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --extra engine -c requirements.lock \
		--generate-hashes --universal --python-version 3.11 -o compose/requirements-engine.lock
	rm -f $(STAMP)

clean:
	rm -rf $(VENV) $(LATEST) .pytest_cache .ruff_cache data $(addsuffix /node_modules,$(NODE_PACKAGES))
