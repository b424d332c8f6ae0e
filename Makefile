# Every target creates .venv on first use from the pinned requirements.
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: venv sample demo test proofs docs bench clean

# make sample MODEL=pyramidal PROMPT="a blue square moving up over coffee"
MODEL ?= distilled
PROMPT ?= a red circle moving right over grass

$(VENV_STAMP): requirements/dev.txt requirements/constraints.txt pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/dev.txt -c requirements/constraints.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(VENV_STAMP)

venv: $(VENV_STAMP)

# The main job: a video from the shipped shapes model (default: DMD-distilled pyramidal, 2-2-1).
sample: $(VENV_STAMP)
	$(PY) -m pyrflow_fast.shapes --model $(MODEL) --prompt "$(PROMPT)" --out outputs

# Pyramidal sampling of the analytic Gaussian video model (exact velocities; NumPy reference).
demo: $(VENV_STAMP)
	$(PY) -m pyrflow_ref.demo --out outputs

# Every test: lint and format check, docs build (warnings are errors), then unit, property,
# distribution and proof tests.
test: $(VENV_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html
	HYPOTHESIS_PROFILE=ci $(PY) -m pytest -q

proofs: $(VENV_STAMP)
	$(PY) -m proofs

docs: $(VENV_STAMP)
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

bench: $(VENV_STAMP)
	$(PY) -m pytest benchmarks --benchmark-enable -q

clean:
	rm -rf docs/_build outputs .pytest_cache
