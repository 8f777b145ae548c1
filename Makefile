# Two commands on a fresh machine (Python 3.11 with venv): `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out
DEMO_PARTICIPANTS ?= 200

CHECKOV_VENV ?= build/venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

.PHONY: venv demo test lint imports typecheck browser checkov clean

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

# The import rules of docs/architecture.md ([tool.importlinter] in pyproject.toml).
imports: $(STAMP)
	$(VENV)/bin/lint-imports

# The type checker over the domain package, lvmass/core ([tool.mypy] in pyproject.toml).
typecheck: $(STAMP)
	$(VENV)/bin/mypy

# terraform/ scanned offline by checkov's built-in policies (no terraform binary or registry needed); any
# failed check fails `make test`, and every skipped check states its reason beside it in the .tf file.
# checkov lives in its own virtualenv: its bc-python-hcl2 and the tests' python-hcl2 are both `hcl2`.
$(CHECKOV_STAMP): terraform/checkov-requirements.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q -r terraform/checkov-requirements.txt
	touch $(CHECKOV_STAMP)

checkov: $(CHECKOV_STAMP)
	$(CHECKOV_VENV)/bin/checkov -d terraform --framework terraform --skip-download --compact --quiet

test: $(STAMP) browser lint imports typecheck checkov
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) -m lvmass.demo --out $(DEMO_DIR) --participants $(DEMO_PARTICIPANTS)

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) $(DEMO_DIR) .pytest_cache .ruff_cache
