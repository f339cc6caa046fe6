# The two set-up commands of the README. Both install what is missing first.
PY := .venv/bin/python
PACKAGES := shared controller agent cli lab bench

.PHONY: demo test lint typecheck unit bootstrap proto clean packages

bootstrap:
	@scripts/bootstrap

demo: bootstrap
	$(PY) -m lab.demo

test: bootstrap lint typecheck
	$(PY) -m pytest -ra

lint:
	.venv/bin/ruff check $(PACKAGES) tests bench packaging
	.venv/bin/ruff format --check $(PACKAGES) tests bench packaging

typecheck:
	.venv/bin/mypy --strict $(PACKAGES)
	.venv/bin/mypy --strict packaging/*.py

# dist/novacron-{edge-common,controller,agent}_<version>_{amd64,arm64}.deb (packaging/README.md)
packages: bootstrap
	$(PY) packaging/build_deb.py --out dist

proto:
	PYTHON=$(PY) scripts/gen-proto

clean:
	rm -rf .state .mypy_cache .ruff_cache .pytest_cache dist
