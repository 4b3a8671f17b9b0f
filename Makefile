# Every target creates .venv itself: torch's CPU build first (pinned), then the project.
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: demo test test-fast lint format docs reproduce bench venv clean

venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install -q torch==2.13.0
	.venv/bin/pip install -q -e .[dev]
	touch $(VENV_STAMP)


demo: $(VENV_STAMP)
	.venv/bin/broken-latents run narrow-5-7-force-12 --seeds 3 --out runs/demo-narrow-5-7-force-12

# -n: one worker per core, at most 4 (each file's tests stay in one worker: --dist loadfile)
test: $(VENV_STAMP)
	$(PY) -m pytest -n auto --maxprocesses 4 --dist loadfile

# The fast tier: everything not marked slow (under a minute on 2 cores).
test-fast: $(VENV_STAMP)
	$(PY) -m pytest -m "not slow" -n auto --maxprocesses 4 --dist loadfile

# ruff's rules and line length are in pyproject.toml; `make format` rewrites what --check refuses.
lint: $(VENV_STAMP)
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: $(VENV_STAMP)
	.venv/bin/ruff format .

# The documentation site, built into site/ (gitignored); --strict turns every warning
# (a broken link, a missing docstring target) into a failure.
docs: $(VENV_STAMP)
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir site

reproduce: $(VENV_STAMP)
	.venv/bin/broken-latents reproduce --seeds 3 --out reproduction

bench: $(VENV_STAMP)
	$(PY) benchmarks/bench.py
	$(PY) benchmarks/bench_scale.py

clean:
	rm -rf .venv runs reproduction site
