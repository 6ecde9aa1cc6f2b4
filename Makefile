PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-tune test lint format bench-tune bench-tune-overhead bench-serve bench-train bench-ingest bench-federated bench-optim clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rayline make-digits --output data/digits.parquet
	$(BIN)/rayline demo pipelines/digits.yaml

demo-tune: $(STAMP)
	$(BIN)/rayline make-digits --output data/digits.parquet
	$(BIN)/rayline demo pipelines/digits_tune.yaml --set storage.run_name=digits-tune-$$(date +%s)

bench-serve: $(STAMP)
	$(BIN)/python benchmarks/serve_bench.py

bench-tune: $(STAMP)
	$(BIN)/python benchmarks/tune_asha.py

bench-tune-overhead: $(STAMP)
	$(BIN)/python benchmarks/tune_overhead.py

bench-train: $(STAMP)
	$(BIN)/python benchmarks/train_bench.py

bench-ingest: $(STAMP)
	$(BIN)/python benchmarks/ingest_bench.py --rounds 3

bench-federated: $(STAMP)
	$(BIN)/python benchmarks/federated_bench.py

bench-optim: $(STAMP)
	$(BIN)/python benchmarks/optim_bench.py
	$(BIN)/python benchmarks/optim_bench.py --model cnn --runs 'ddp sync,ps async,ps bounded (K=2)'
	$(BIN)/python benchmarks/optim_bench.py --part compression

test: $(STAMP)
	$(BIN)/ruff check platform tests benchmarks pipelines
	bash tests/run_suite.sh $(BIN)/python

lint: $(STAMP)
	$(BIN)/ruff check platform tests benchmarks pipelines
	$(BIN)/ruff format --check platform tests benchmarks pipelines

format: $(STAMP)
	$(BIN)/ruff format platform tests benchmarks pipelines
	$(BIN)/ruff check --fix platform tests benchmarks pipelines

clean:
	rm -rf $(VENV) .rayline data benchmarks/.peer-venv benchmarks/.flower-venv
