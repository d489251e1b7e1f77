# labkit: the two commands are `sudo make report` and `sudo make test`.
# `make` alone lists the targets (from the `## ` comments below).

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV     := .venv
PY       := $(VENV)/bin/python
PORT     ?= 8888
# make report NOTEBOOKS="notebooks/01-xdp-drop.ipynb" ARGS="..."
NOTEBOOKS ?=
ARGS      ?=
# make test PYTEST_ARGS="-k xdp -x"
PYTEST_ARGS ?=

# Outputs and execution counts go; so does what runs add to metadata (papermill,
# timings, scroll state) and to notebook metadata. Cell tags stay (papermill
# finds the `parameters` cell by its tag), and so does the kernelspec.
STRIP_FLAGS := --ClearOutputPreprocessor.enabled=True \
    $(foreach f,collapsed scrolled execution papermill ExecuteTime,--ClearOutputPreprocessor.remove_metadata_fields=$(f)) \
    --ClearMetadataPreprocessor.enabled=True --ClearMetadataPreprocessor.clear_cell_metadata=False \
    --ClearMetadataPreprocessor.preserve_nb_metadata_mask=kernelspec

.PHONY: help setup report test lint bench lab labs class class-stop clean-kernel doctor clean strip-notebooks

help: ## List the targets
	@echo "labkit: XDP / eBPF / DPDK packet-processing workbench"
	@echo
	@echo "Usage: sudo make TARGET [VAR=value ...]"
	@echo
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) \
	    | awk 'BEGIN {FS = ":.*## "}; {printf "  %-16s %s\n", $$1, $$2}'
	@echo
	@echo "Variables: NOTEBOOKS=, ARGS= (report), PYTEST_ARGS= (test), PORT=$(PORT) (lab; class: 8000), ROSTER= IP= (class), PYTHON= (setup)"

# Always runs the script: it checks each step itself (stamps for pip and the
# l2fwd build) and is a no-op of a second or two when all is in place, while
# still repairing what a reboot or an apt removal undid (bpffs, packages).
setup: ## Install and check everything (apt packages, headers link, bpffs, .venv, kernel, l2fwd); as root
	@bash scripts/setup.sh

report: setup ## Run every experiment notebook headlessly: HTML in reports/, tables in data/
	$(PY) -m labkit report $(NOTEBOOKS) $(ARGS)

test: setup lint ## Run the linter, then the test suite (real namespaces, XDP and generators; as root)
	$(PY) -m pytest -q --durations=10 $(PYTEST_ARGS)

lint: ## Check the code with ruff (pyproject.toml): `ruff format .` formats it, `ruff check --fix .` sorts imports and removes unused ones
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: setup ## Run the benchmarks
	$(PY) -m labkit bench $(ARGS)

lab: setup ## Start JupyterLab on 127.0.0.1:PORT (default 8888; token printed in the log and by `jupyter server list`)
	@echo "JupyterLab on http://127.0.0.1:$(PORT)/ ; the URL with its token is printed below,"
	@echo "or run: $(VENV)/bin/jupyter server list"
	$(VENV)/bin/jupyter lab --ip=127.0.0.1 --port=$(PORT) --no-browser --allow-root \
	    --ServerApp.root_dir="$(CURDIR)/notebooks" --MappingKernelManager.default_kernel_name=labkit

# make labs LESSONS="03-maps 04-parsing"
LESSONS ?= $(notdir $(wildcard labs/source/*))
labs: | $(PY) ## Build the course's student versions in labs/release/ (nbgrader; not in git); LESSONS= to pick
	cd labs && for l in $(LESSONS); do \
	    PATH="$(CURDIR)/$(VENV)/bin:$$PATH" ../$(PY) -m nbgrader generate_assignment "$$l" --force || exit 1; done
	@echo "Student versions in labs/release/ (instructor guide: labs/README.md)"

# sudo make class ROSTER=students.csv [PORT=8000] [IP=127.0.0.1]
ROSTER ?=
IP     ?= 127.0.0.1
class: setup ## Start a class: JupyterHub on IP:PORT (default 127.0.0.1:8000) for ROSTER's logins (labs/README.md); as root
	@test -n "$(ROSTER)" || { echo "name the roster: sudo make class ROSTER=students.csv (one login per line)" >&2; exit 2; }
	$(PY) -m labkit class start "$(ROSTER)" --ip=$(IP) --port=$(if $(filter command line,$(origin PORT)),$(PORT),8000)

class-stop: | $(PY) ## Stop the class: the hub, its proxy, every server, and every student's testbeds
	$(PY) -m labkit class stop

clean-kernel: | $(PY) ## Remove what crashed runs left in the kernel (namespaces, XDP programs, rules, processes)
	$(PY) -m labkit clean

doctor: | $(PY) ## Check this machine for what the experiments need
	$(PY) -m labkit doctor

# doctor and clean-kernel only look and repair: they do not run the set-up.
$(PY):
	@echo "There is no $(VENV) yet: run 'sudo make setup' first." >&2; exit 1

clean: ## Remove reports/* and build/ (never data/: raw data is kept)
	find reports -mindepth 1 -maxdepth 1 ! -name .gitkeep -exec rm -rf {} +
	rm -rf build
	@echo "data/ was left alone: raw results are never deleted by make clean"

strip-notebooks: ## Clear outputs, execution counts and run metadata of notebooks/*.ipynb (keeps tags, kernelspec)
	$(PY) -m jupyter nbconvert --inplace $(STRIP_FLAGS) notebooks/*.ipynb
