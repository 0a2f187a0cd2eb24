# The two commands of the README. Each installs what is missing, then runs.
.PHONY: demo test setup

demo:
	bash scripts/setup.sh run
	.venv/bin/stdd demo

test:
	bash scripts/setup.sh test
	bash scripts/test.sh

setup:
	bash scripts/setup.sh test
