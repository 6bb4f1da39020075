# `make test` and `make demo` each set up .venv/ on first use (torch pinned by constraints.txt).
PY := .venv/bin/python
PIP := .venv/bin/pip
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: test demo quality style bench clean

.venv/.installed: pyproject.toml constraints.txt
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $@

test: .venv/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q

demo: .venv/.installed
	$(PY) -m lntune.demo

quality: .venv/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

style: .venv/.installed
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: .venv/.installed
	$(PY) bench/step.py

clean:
	rm -rf .venv build *.egg-info .pytest_cache
