# Two commands for the standalone engine and for contributors (the WebUI installs Alloy by itself):
#   make demo   a venv, the runtime + UI requirements, two small demo checkpoints, the app on :7870
#   make test   the same venv plus the test tools, then the README's test command
# Both are idempotent: a second run installs and generates nothing and starts at once.
# TORCH: the torch requirement pip installs when the venv has none (the CPU wheel on CI machines;
# e.g. TORCH="torch --index-url https://download.pytorch.org/whl/cpu" elsewhere).

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PORT ?= 7870
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
DEMO := demo/models

.PHONY: demo test demo-models clean-demo

demo: $(VENV)/.alloy-ui demo-models
	$(PY) -m merger ui --models-dir $(DEMO) --port $(PORT) --no-browser

test: $(VENV)/.alloy-dev
	$(PY) -m pytest -q tests

demo-models: $(DEMO)/demo_a.safetensors $(DEMO)/demo_b.safetensors

$(DEMO)/demo_%.safetensors: | $(VENV)/.alloy-torch
	@mkdir -p $(DEMO)
	$(PY) -m merger.synth --arch sd1 --tiny 16 --seed $(if $(filter a,$*),1,2) --out $@ --overwrite

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.alloy-torch: | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) $(TORCH)
	@touch $@

$(VENV)/.alloy-ui: requirements.txt requirements-ui.txt constraints-webui.txt | $(VENV)/.alloy-torch
	$(PIP) -r requirements-ui.txt -c constraints-webui.txt
	@touch $@

$(VENV)/.alloy-dev: requirements-dev.txt $(VENV)/.alloy-ui
	$(PIP) -r requirements-dev.txt -c constraints-webui.txt
	@touch $@

clean-demo:
	rm -rf demo
