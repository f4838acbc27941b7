# Two commands on a fresh machine: `make run` and `make test`. Both bootstrap .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test tools lint unit schemas bench soak clean up

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## run: start the embedded stack and the demo (a candidate that degrades and is killed)
run: $(STAMP)
	$(BIN)/rollout demo

## up: start the embedded stack in the foreground (Ctrl-C stops all)
up: $(STAMP)
	$(BIN)/rollout up

## test: lint, then the whole suite (unit, integration against a real nats-server, slow fault tests)
test: $(STAMP) tools lint
	$(BIN)/python -m pytest -q

# Two checkers from Debian that some tests run: promtool (prometheus) checks the /metrics
# exposition, docker-compose validates compose/docker-compose.yml without an engine.
APT_INSTALL = apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq
tools:
	@command -v promtool >/dev/null || { $(APT_INSTALL) prometheus >/dev/null; } || echo "warning: could not install promtool (Debian package prometheus); the metrics tests will fail" >&2
	@command -v docker-compose >/dev/null || { $(APT_INSTALL) docker-compose >/dev/null; } || echo "warning: could not install docker-compose; the compose tests will fail" >&2

lint: $(STAMP)
	$(BIN)/ruff check engine consumers events tests bench

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

## schemas: regenerate docs/schemas/ from the event Structs
schemas: $(STAMP)
	$(BIN)/rollout schemas --out docs/schemas

## bench: every benchmark; prints a table, writes bench/results/latest.json and docs/benchmarks.md
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet 'eventsourcing==9.5.6' py-spy pyinstrument
	$(BIN)/python -m bench.run

## soak: 10 minutes of canary_stats + rollback at 80% of measured capacity (memory and lag
## sampled, bench/results/soak.json), then the fault tests at scale 10 (not part of make test)
soak: $(STAMP)
	$(BIN)/python -m bench.soak

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache data
