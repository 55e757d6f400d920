# make demo: set up, then the main job.  make test: set up, then the whole suite.
.PHONY: setup demo test

setup:
	@scripts/setup

demo: setup
	.venv/bin/python scripts/demo.py

test: setup
	.venv/bin/python -m pytest -q
