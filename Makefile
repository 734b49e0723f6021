# fetalnode: `make demo` and `make test` install what is missing, then run.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PKGS := orthanc orthanc-webviewer orthanc-python orthanc-dicomweb dcmtk dicom3tools fonts-dejavu-core chromium chromium-driver openssl rabbitmq-server
OHIF_VERSION := 3.13.2
OHIF := .ohif/package/dist/index.html
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-unit deps apt lint typecheck layers clean

deps: apt $(STAMP) $(OHIF)

apt:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

# The OHIF viewer the demo's Orthanc serves at /ohif/: the prebuilt `dist/` of npm's @ohif/app, unpacked
# from its tarball (its dependencies are bundled in it; ~50 MB download, ~210 MB unpacked; never committed).
# npm fetches it: Debian's `npm` package is installed only when no npm is on the PATH (a Node.js from
# elsewhere, with its own npm, is left as it is: Debian's npm conflicts with such a nodejs package).
$(OHIF):
	@command -v npm >/dev/null || { \
	  echo "installing Debian package: npm (to fetch the OHIF viewer @ohif/app)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends npm; \
	}
	@command -v npm >/dev/null || { echo "npm is needed to fetch the OHIF viewer (@ohif/app)"; exit 1; }
	rm -rf .ohif && mkdir -p .ohif
	npm pack --silent --pack-destination .ohif @ohif/app@$(OHIF_VERSION) >/dev/null
	tar -xzf .ohif/ohif-app-$(OHIF_VERSION).tgz -C .ohif && rm .ohif/ohif-app-$(OHIF_VERSION).tgz
	@touch $@

demo: deps
	$(PY) -m harness.demo $(if $(DEMO_EXIT),--exit,)

test: deps
	$(VENV)/bin/ruff check src tests benchmarks samples harness
	$(VENV)/bin/mypy src harness
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -q

# The fast lane (seconds): no processes, no sockets, no training runs. `make test` runs everything.
test-unit: deps
	$(VENV)/bin/pytest -q -m "unit and not training"

lint: deps
	$(VENV)/bin/ruff check src tests benchmarks samples harness

typecheck: deps
	$(VENV)/bin/mypy src harness

# The import contracts of .importlinter: the layers, no cycles, what Orthanc's Python may load.
layers: deps
	$(VENV)/bin/lint-imports

clean:
	rm -rf .run .pytest_cache
