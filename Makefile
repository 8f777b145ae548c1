# Two commands on a fresh machine (Python 3.11 with venv): `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out
DEMO_PARTICIPANTS ?= 200

.PHONY: venv demo test lint browser clean

venv: $(STAMP)

$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

# Headless Chromium renders the analysis report in its test (Debian packages; root on our machines).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium could not be installed: the report rendering test will be skipped"; }

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP) browser lint
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) -m lvmass.demo --out $(DEMO_DIR) --participants $(DEMO_PARTICIPANTS)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache
