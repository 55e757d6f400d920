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

test: setup
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check .
