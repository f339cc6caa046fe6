# The two set-up commands of the README. Both install what is missing first.
PY := .venv/bin/python
PACKAGES := shared controller agent cli lab bench

.PHONY: demo test lint typecheck unit bootstrap proto clean

bootstrap:
	@scripts/bootstrap

demo: bootstrap
	$(PY) -m lab.demo

test: bootstrap lint typecheck
	$(PY) -m pytest -ra

lint:
	.venv/bin/ruff check $(PACKAGES) tests bench
	.venv/bin/ruff format --check $(PACKAGES) tests bench

typecheck:
	.venv/bin/mypy --strict $(PACKAGES)

proto:
	PYTHON=$(PY) scripts/gen-proto

clean:
	rm -rf .state .mypy_cache .ruff_cache .pytest_cache
