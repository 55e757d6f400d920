# make demo: set up, then the main job.  make test: set up, then the whole suite.
.PHONY: setup demo test lint

setup:
	@scripts/setup

# compile the bundled model's steps once (kept in tfm's cache: later runs start in about a second), translate a few
# dates, each in a new process as a user would, then compare that model on every backend that runs here
demo: setup
	.venv/bin/tfm compile
	@for text in "3rd of March, 2021" "2021년 3월 3일" "Wednesday, March 3, 2021"; do \
	  printf '%s -> ' "$$text"; .venv/bin/tfm translate "$$text"; done
	.venv/bin/tfm compare

# the suite is mostly compiling (one core's work per process): one worker per core, up to 4, each taking whole test
# files so that a file's tests share their compiled steps; the workers share the compiled-program cache (conftest.py)
test: setup
	.venv/bin/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile

lint: setup
	.venv/bin/ruff check .
