# cloudpay-scf developer commands.  `make test` and `make run` work from a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SRC    := shared functions devtools tests bench

.PHONY: help venv browser check lint compat test test310 run demo bench package deploy clean lock

help:
	@echo "make run    - local stack: MongoDB (nx-27017), WeChat Pay simulator, gateway"
	@echo "make test   - virtualenv, Python 3.10 check, lint, the whole test suite"
	@echo "make demo   - the checkout loop headless against the local stack, step by step"
	@echo "make test310 - the whole suite on a real Python 3.10 (SCF's runtime)"
	@echo "make package - one zip per function under dist/ (SCF Python3.10, bytecode, locked versions)"
	@echo "make lock   - re-resolve requirements.txt into requirements.lock"
	@echo "make bench  - benchmarks (ratios against a baseline, one run)"

# The runtime packages come from the lock with hash checking, exactly as the zips get
# them; the dev tools are installed on top, constrained to the same versions.
PIP := -m pip install --disable-pip-version-check -q
PINS = sed -n 's/^\([A-Za-z0-9._-]*==[^ ;\\]*\).*/\1/p' requirements.lock

$(STAMP): requirements.lock requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) $(PIP) --upgrade pip
	$(PY) $(PIP) --require-hashes -r requirements.lock
	$(PINS) > $(VENV)/pins.txt
	$(PY) $(PIP) -r requirements-dev.txt -c $(VENV)/pins.txt
	touch $(STAMP)

venv: $(STAMP)

# SCF's newest runtime is Python 3.10: nothing newer may be used.
compat: $(STAMP)
	$(VENV)/bin/vermin --target=3.10- --no-tips --violations --no-parse-comments $(SRC)

lint: $(STAMP)
	$(VENV)/bin/ruff check $(SRC)

check: compat lint

# The browser tests (demo page, console) need Debian's Chromium and its driver; the
# mini-program example's syntax check needs node; the walk-through test needs curl.
BROWSER_TOOLS = chromium chromedriver node curl
browser:
	@missing=""; for tool in $(BROWSER_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  packages=$$(echo "$$missing" | sed 's/chromedriver/chromium-driver/; s/node/nodejs/'); \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$packages >/dev/null; \
	else echo "install these Debian packages for the browser and example tests:$$missing" >&2; exit 1; fi

test: check browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The whole suite once more on a real Python 3.10 (SCF's runtime); CI runs it after `test`.
PY310 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.10.*/bin/python3.10) $(wildcard /usr/bin/python3.10))
VENV310 := .venv310

$(VENV310)/.installed: requirements.lock requirements-dev.txt
	@test -n "$(PY310)" || { echo "Python 3.10 not found (pyenv install 3.10, or set PY310=...)" >&2; exit 1; }
	$(PY310) -m venv $(VENV310)
	$(VENV310)/bin/python $(PIP) --require-hashes -r requirements.lock
	$(PINS) > $(VENV310)/pins.txt
	$(VENV310)/bin/python $(PIP) -r requirements-dev.txt -c $(VENV310)/pins.txt
	touch $@

test310: $(VENV310)/.installed browser
	$(VENV310)/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# Ports: make run MONGO_PORT=27018 SIM_PORT=8090 GATEWAY_PORT=8080 SHOP_PORT=8091 (0: any free one).
RUN_PORTS = $(if $(MONGO_PORT),--mongo-port $(MONGO_PORT)) $(if $(SIM_PORT),--sim-port $(SIM_PORT)) \
            $(if $(GATEWAY_PORT),--gateway-port $(GATEWAY_PORT)) $(if $(SHOP_PORT),--shop-port $(SHOP_PORT))
run: $(STAMP)
	$(PY) -m devtools.local_stack $(RUN_PORTS)

demo: $(STAMP)
	$(PY) -m devtools.demo

package: $(STAMP)
	$(PY) -m devtools.package

# Re-resolve requirements.txt into requirements.lock (CPython 3.10, manylinux x86_64, hashes).
lock: $(STAMP)
	$(VENV)/bin/uv pip compile requirements.txt --python-version 3.10 --python-platform x86_64-manylinux_2_17 \
	  --generate-hashes --custom-compile-command "make lock" -o requirements.lock

# Needs serverless-cloud-framework (npm i -g serverless-cloud-framework) and ./.env
# (from .env.example).  The root serverless.yml deploys scf-prepare/, scf-callback/, scf-reconcile/.
deploy: package
	scf deploy

bench: package
	$(PY) -m bench

clean:
	rm -rf $(VENV) $(VENV310) dist .local .pytest_cache .ruff_cache
