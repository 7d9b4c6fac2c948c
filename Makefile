# Two commands on a fresh machine: `make quickstart` (set up + run the main job), `make test`.
# Both create and reuse .venv; torch is pinned to the CPU build that installs from local disk.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0

.PHONY: setup test quickstart bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[train,plot,tokens,postgres,dev]' $(TORCH)
	touch $@

# The tests use a real PostgreSQL too: ensure_postgres.sh starts one (apt-installing it as root);
# and a real headless Chromium for the trace browser: ensure_chromium.sh apt-installs it as root.
test: setup
	bash scripts/ensure_chromium.sh
	SYNTH_TEST_POSTGRES_URL="$$(bash scripts/ensure_postgres.sh)" $(PY) -m pytest -q

quickstart: setup
	bash scripts/quickstart.sh

bench: setup
	for script in bench/bench_*.py bench/expert_quality.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) *.egg-info
