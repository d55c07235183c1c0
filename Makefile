# The quick start: `make demo` (install + main job on the embedded stack), `make test` (install + tests).
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin
# Every install is pinned by constraints.txt (the versions CI and the images use; `make constraints` regenerates it).
CONSTRAINTS = -c constraints.txt

.PHONY: demo test up down clean ops-tools browser-tools constraints screenshots

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(CONSTRAINTS) -e '.[dev]'
	touch $@

# aisfx (the audio encoder's weights) is installed with --no-deps: its wheel pins numpy==1.23 and librosa==0.9.2.
$(VENV)/.installed-dev: pyproject.toml constraints.txt $(VENV)/.installed-run
	$(BIN)/python -m pip install --quiet $(CONSTRAINTS) -e '.[dev,train]'
	$(BIN)/python -m pip install --quiet $(CONSTRAINTS) --no-deps aisfx==0.1.2
	touch $@

demo: $(VENV)/.installed-run
	$(BIN)/popscore demo

test: $(VENV)/.installed-dev ops-tools browser-tools
	$(BIN)/python -m pytest

# promtool and prometheus (Debian's prometheus package) for tests/ops; those tests skip, saying why, without them.
ops-tools:
	@command -v promtool >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	   prometheus >/dev/null) || echo "promtool not installed: tests/ops will skip the promtool checks"; }

# After changing a dependency in pyproject.toml: install it into the venv, then pin the new closure.
constraints: $(VENV)/.installed-dev
	$(BIN)/python tools/deps.py constraints > constraints.txt

# Debian's chromium and chromedriver for the live board's browser test (tests/integration/test_board.py), which
# skips, saying why, without them; selenium drives them (no browser download).
browser-tools:
	@command -v chromedriver >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	   chromium chromium-driver >/dev/null) || echo "chromium not installed: the board's browser test will skip"; }

# Refresh the README's pictures of the live board (docs/board*.png) from the browser test.
screenshots: $(VENV)/.installed-dev browser-tools
	POPSCORE_SCREENSHOT_DIR=docs $(BIN)/python -m pytest tests/integration/test_board.py -k draws_the_post_chart

up: $(VENV)/.installed-run
	$(BIN)/popscore up

down:
	$(BIN)/popscore down

clean:
	rm -rf $(VENV) .popscore
