# cloudpay-scf developer commands.  `make test` and `make run` work from a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SRC    := shared functions devtools tests bench

.PHONY: help venv check lint compat test run bench package deploy clean

help:
	@echo "make run    - local stack: MongoDB (nx-27017), WeChat Pay simulator, gateway"
	@echo "make test   - virtualenv, Python 3.10 check, lint, the whole test suite"
	@echo "make package - one zip per function under dist/ (SCF Python3.10)"
	@echo "make bench  - benchmarks (ratios against a baseline, one run)"

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q --upgrade pip
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

# SCF's newest runtime is Python 3.10: nothing newer may be used.
compat: $(STAMP)
	$(VENV)/bin/vermin --target=3.10- --no-tips --violations --no-parse-comments $(SRC)

lint: $(STAMP)
	$(VENV)/bin/ruff check $(SRC)

check: compat lint

test: check
	$(PY) -m pytest -q $(PYTEST_ARGS)

run: $(STAMP)
	$(PY) -m devtools.local_stack

package: $(STAMP)
	$(PY) -m devtools.package

# Needs serverless-cloud-framework (npm i -g serverless-cloud-framework) and deploy/.env.
deploy: package
	cd deploy && scf deploy

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) dist .local .pytest_cache .ruff_cache
