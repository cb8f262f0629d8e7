# The two quick-start commands. Each installs what is missing first (scripts/setup.sh, idempotent).
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: setup demo test
setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/fastbt demo $(DEMO_ARGS)

test: setup
	.venv/bin/python -m pytest $(PYTEST_ARGS)
