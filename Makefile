# Two commands on a fresh machine (python3 >= 3.10 with pip and venv):
#   make demo   -- installs into .venv (torch included, ~2 minutes the first time) and trains a CNN
#   make test   -- installs the same way and runs the test suite
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint tune

$(BIN)/xt: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/xt
	$(BIN)/xt run --model cnn --data synthetic-images --epochs 3 --metric accuracy --save-dir runs/demo --overwrite

test: $(BIN)/xt
	$(BIN)/pytest -q -n 2 --dist loadfile -m "not valgrind" --durations=15

lint: $(BIN)/xt
	$(BIN)/nox -s lint

# hyper-parameter search (`xt tune`): the [tune] extra, whose xt-optuna plugin (a separate distribution,
# on no index yet) comes from its path here
tune: $(BIN)/xt
	$(BIN)/pip install --quiet -e '.[tune]' ./plugins/xt-optuna
