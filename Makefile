# jobwire — `make run` starts it on embedded defaults; `make test` runs the whole suite.
# the interpreter .venv is built on: the system's optimised build before a pyenv one (scripts/python.sh)
ifeq ($(origin PY),undefined)
PY := $(shell bash scripts/python.sh)
endif
VENV := .venv
BIN := $(VENV)/bin
WHEELHOUSE := $(VENV)/wheelhouse
STAMP := $(VENV)/.installed-$(shell (cat requirements.lock pyproject.toml; echo '$(PY)') | cksum | cut -d' ' -f1)
PYTEST_WORKERS ?= 2

.PHONY: install run test lint services browser screenshots bench soak chaos clean lock

$(STAMP): pyproject.toml requirements.lock
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "jobwire needs Python >= 3.11 (set PY=python3.11)")'
	@# a venv built on another interpreter than $(PY) is built again (its packages would not change it)
	@if [ -x $(BIN)/python ] && [ "$$(cat $(VENV)/.interpreter 2>/dev/null)" != '$(PY)' ]; then \
		echo "rebuilding $(VENV) on $(PY) (it was built on $$(cat $(VENV)/.interpreter 2>/dev/null || echo another interpreter))"; \
		rm -rf $(VENV); fi
	@test -x $(BIN)/python || { echo "building $(VENV) on $(PY)"; $(PY) -m venv $(VENV) && echo '$(PY)' > $(VENV)/.interpreter; }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[dev]'
	@# the wheels of jobwire's runtime dependencies (every extra) and its build backend: the
	@# packaging tests install the wheel into fresh venvs from here, offline (tests/packaging/)
	rm -rf $(WHEELHOUSE)
	$(BIN)/python -m pip download -q -d $(WHEELHOUSE) -c requirements.lock '.[all]' 'setuptools>=77'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/jobwire serve --jobs examples/quickstart.yaml

services:
	@bash scripts/services.sh

# Debian's chromium and axe-core (npm, pinned) for tests/browser/
browser:
	@bash scripts/browser.sh

# the dashboard's screenshots in docs/img/ (a real `jobwire serve` with demo jobs, headless chromium)
screenshots: install browser
	$(BIN)/python scripts/screenshots.py

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy --strict src/jobwire
	$(BIN)/lint-imports

test: install services browser lint
	$(BIN)/pytest -n $(PYTEST_WORKERS) -q -p no:cacheprovider --durations=10 -m "not slow"
	$(BIN)/pytest -q -p no:cacheprovider -m slow

bench: install
	$(BIN)/python -m bench

# kill -9 rounds under keyed trigger load and the full-disk case, figures in a table (~minutes; not in `make test`)
chaos: install
	$(BIN)/python -m bench.chaos

lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^jobwire' > requirements.lock

clean:
	rm -rf .jobwire .pytest_cache .mypy_cache .ruff_cache .browser
