# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.metarec-installed
export METAREC_DATA_DIR ?= $(abspath ../shared/data)
# CPU-only torch on an ordinary machine: make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.PHONY: test demo install docs clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch first, pinned: a looser spec would pull a multi-GB CUDA build.
$(STAMP): $(PY) pyproject.toml constraints.txt
	@echo "installing torch==2.13.0 (TORCH_INDEX='$(TORCH_INDEX)'; empty: the default index, which on an ordinary machine is the multi-GB CUDA build)"
	$(PY) -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@$(PY) -c "import torch, metarec; print('installed torch', torch.__version__, '(CUDA' if torch.version.cuda else '(CPU', 'build), metarec', metarec.__version__)"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(VENV)/bin/metarec demo

# the documentation site (mkdocs.yml) into site/; the docs extra is installed on first use
docs: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[docs]'
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) build site *.egg-info src/*.egg-info
