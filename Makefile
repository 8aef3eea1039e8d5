# make demo: set up .venv (if missing) and run `flatrob demo`; make test: same set-up (with the extras the tests
# use: timm, hub, robustbench, hf, llm, docs), then the suite; make docs: same set-up, then the manual (docs/) as a
# website in site/, any warning an error; make gpu-check: the CUDA tests and throughput figures (says so and
# succeeds on a machine without CUDA). Each also links man/flatrob.1 into $(VENV)/share/man/man1, where
# `man flatrob` finds it with $(VENV)/bin on PATH (man-db searches DIR/../share/man of every PATH entry; pip's
# editable install leaves pyproject's data-files out).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MAN := $(VENV)/share/man/man1/flatrob.1

.PHONY: demo test docs install clean gpu-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1 || $(BIN)/pip install -q "torch>=2.4" "torchvision>=0.19"
	$(BIN)/pip install -q -e ".[test,plot,hf,timm,hub,robustbench,llm,docs]"
	# torchattacks 3.5.1 pins requests~=2.25.1, which datasets/huggingface_hub outgrew (the pin is stale: it
	# only downloads weights with it); its real needs (torch, scipy, numpy, tqdm) are installed above.
	$(BIN)/pip install -q --no-deps "torchattacks>=3.5"
	$(BIN)/pip install -q --no-deps robustbench==1.1.1
	# nanoGCG 0.3.0 (the reference tests/lm/test_nanogcg.py and bench/gcg.py compare GCG against) pins
	# transformers<=4.47.1; the pin is stale for what we use (its prefix cache off), so no deps: torch, transformers,
	# scipy and tqdm come from the extras above (its protobuf and sentencepiece serve slow tokenizers only).
	$(BIN)/pip install -q --no-deps "nanogcg==0.3.0"
	touch $(STAMP)

$(MAN): man/flatrob.1
	mkdir -p $(dir $@)
	ln -sfn $(CURDIR)/man/flatrob.1 $@

install: $(STAMP) $(MAN)

demo: $(STAMP) $(MAN)
	$(BIN)/flatrob demo

test: $(STAMP) $(MAN)
	$(BIN)/python -m pytest

docs: $(STAMP) $(MAN)
	$(BIN)/mkdocs build --strict --site-dir site

gpu-check: $(STAMP) $(MAN)
	$(BIN)/python scripts/gpu-check

clean:
	rm -rf $(VENV) build site *.egg-info
