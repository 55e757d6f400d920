# make demo: set up, then the main job.  make test: set up, then the whole suite.
.PHONY: setup demo test

setup:
	@scripts/setup

SAMPLES = "3rd of March, 2021" "2021년 3월 3일" "Wednesday, March 3, 2021"

# translate a few dates with the bundled model, then compare that model on every backend that runs here
demo: setup
	.venv/bin/tfm translate $(SAMPLES)
	.venv/bin/tfm compare

test: setup
	.venv/bin/python -m pytest -q
