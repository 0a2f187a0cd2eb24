# The two commands of the README. Each installs what is missing (Python packages from the lock
# files in requirements/), then runs. `make lock` refreshes the lock files from pyproject.toml.
.PHONY: demo test setup lock lock-check

demo:
	bash scripts/setup.sh run
	.venv/bin/stdd demo

test:
	bash scripts/setup.sh test
	bash scripts/test.sh

setup:
	bash scripts/setup.sh test

lock:
	bash scripts/lock.sh

lock-check:
	bash scripts/lock.sh --check
