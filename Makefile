# The two quick-start commands. Each installs what is missing first (scripts/setup.sh, idempotent).
PYTEST_ARGS ?=

.PHONY: setup test
setup:
	@bash scripts/setup.sh

test: setup
	.venv/bin/python -m pytest $(PYTEST_ARGS)
