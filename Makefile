# Every target creates .venv itself: torch's CPU build first (pinned), then the project.
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: demo test reproduce bench venv clean

venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install -q torch==2.13.0
	.venv/bin/pip install -q -e .[dev]
	touch $(VENV_STAMP)

demo: $(VENV_STAMP)
	.venv/bin/broken-latents run narrow-5-7-force-12 --seeds 3 --out runs/demo-narrow-5-7-force-12

test: $(VENV_STAMP)
	$(PY) -m pytest

reproduce: $(VENV_STAMP)
	.venv/bin/broken-latents reproduce --seeds 3 --out reproduction

bench: $(VENV_STAMP)
	$(PY) benchmarks/bench.py
	$(PY) benchmarks/bench_scale.py

clean:
	rm -rf .venv runs reproduction
