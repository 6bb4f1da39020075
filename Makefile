# `make test` and `make demo` each set up .venv/ on first use (torch pinned by constraints.txt).
# `make test-compat` sets up .venv-compat/ with the oldest supported peft/transformers (constraints-compat.txt) and runs
# the tuner tests there.
PY := .venv/bin/python
PIP := .venv/bin/pip
COMPAT_PY := .venv-compat/bin/python
TUNER_TESTS := tests/tuner/test_matrix.py tests/tuner/test_errors.py tests/tuner/test_mask.py tests/tuner/test_integration.py tests/tuner/test_registration.py
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: test test-compat demo quality style bench clean

.venv/.installed: pyproject.toml constraints.txt
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $@

test: .venv/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q

# .venv-compat sees .venv's packages behind its own (a .pth file, like a venv made with --system-site-packages on top
# of .venv), so the multi-GB torch stack pinned in constraints.txt is reused rather than unpacked a second time; pip
# installs into .venv-compat only what the old stack needs in other versions (peft, transformers, tokenizers, ...).
.venv-compat/.installed: .venv/.installed pyproject.toml constraints.txt constraints-compat.txt
	rm -rf .venv-compat
	python3 -m venv .venv-compat
	$(PY) -c "import sysconfig; print(sysconfig.get_path('purelib'))" > \
		"$$($(COMPAT_PY) -c "import sysconfig; print(sysconfig.get_path('purelib'))")/_lntune_base_venv.pth"
	$(COMPAT_PY) -m pip install -q -c constraints-compat.txt -e '.[dev]'
	touch $@

test-compat: .venv-compat/.installed
	$(COMPAT_PY) -m pytest -q -p no:cacheprovider $(TUNER_TESTS)

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
	rm -rf .venv .venv-compat build *.egg-info .pytest_cache
