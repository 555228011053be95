# Every target works on a fresh machine: the first one that needs the venv creates it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo demo-moto test lint typecheck unit sam security bench bench-e2e bench-load bench-enrol docs standard clean localstack-up localstack-down localstack-deploy e2e

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## The one-command demo: LocalStack (host mode, started and stopped here), template.yaml deployed, two facilities
## uploading 120 signed visits, receipts, the health book in a fake VNeID, the monthly report, a summary.
## LocalStack's venvs install while the project's does (a fresh machine installs both).
demo:
	infra/localstack/install.sh localstack lambda sam & installing=$$!; \
	$(MAKE) --no-print-directory $(STAMP) && wait $$installing && \
	infra/localstack/with-localstack.sh $(BIN)/python -m healthbook_dev.demos.stack --visits 120 --out demo-out

## The same pipeline in process on moto: no LocalStack, no deploy (about a minute).
demo-moto: $(STAMP)
	$(BIN)/healthbook demo --visits 200 --out demo-out

## Lint, type-check and run every test CI needs, slow and networked ones included (make unit is the inner loop).
test: lint typecheck sam
	$(BIN)/pytest -m "not localstack"

lint: $(STAMP)
	$(BIN)/ruff check layers dev functions tests bench infra

typecheck: $(STAMP)
	$(BIN)/mypy

## The inner loop: no network, no tool venvs, under a minute (tests marked slow or network run in make test).
unit: $(STAMP)
	$(BIN)/pytest -n auto -m "not localstack and not slow and not network"

## The SAM CLI in its own Python 3.13 venv (it pins libraries our venv must not share): sam validate, sam build.
sam:
	infra/localstack/install.sh sam

## Policy scan: checkov (its own Python 3.12 venv, infra/security/) on the SAM-expanded template, offline; any failed
## check that template.yaml does not suppress with a reason fails. cfn-lint runs in `make test`. docs/security.md
security:
	infra/security/scan.sh

## LocalStack in host mode (no Docker): start, stop, deploy template.yaml, and the end-to-end tests.
localstack-up:
	infra/localstack/up.sh

localstack-down:
	infra/localstack/down.sh

localstack-deploy: localstack-up
	infra/localstack/deploy.sh

e2e: $(STAMP) localstack-up
	HEALTHBOOK_E2E=1 $(BIN)/pytest -m localstack tests/e2e

## Benchmarks print ratios against a baseline measured in the same run.
bench: $(STAMP)
	$(BIN)/python bench/validate.py
	$(BIN)/python bench/verify.py
	$(BIN)/python bench/cold_start.py
	$(BIN)/python bench/enrol_limits.py
	$(BIN)/python bench/report_read.py

## Upload -> receipt -> VNeID on LocalStack, and the orchestration's $ per million visits (docs/cost.md).
bench-e2e: $(STAMP) localstack-up
	$(BIN)/python bench/e2e.py

## 50 facilities, a burst, a VNeID outage and the drain on LocalStack: lost and duplicated (both 0), latencies,
## conflicts, per-visit resource counts (docs/performance.md, "Bursts and backlog"). Not run in CI.
bench-load: export HB_SQS_ESM_CONCURRENCY := 1
bench-load: export HB_LAMBDA_SERVICE_METRICS := 0
# Lambda's concurrency capped for two cores (bench/load.py reserves the ingest function's share): without a cap
# the drain started 150 workers of one function, and their cold starts took the cores from LocalStack.
bench-load: export LAMBDA_LIMITS_CONCURRENT_EXECUTIONS := 40
bench-load: export LAMBDA_LIMITS_MINIMUM_UNRESERVED_CONCURRENCY := 8
bench-load: $(STAMP) localstack-up
	$(BIN)/python bench/load.py --endpoint http://127.0.0.1:$${HB_LOCALSTACK_PORT:-4566}

## A province's list of 20,000 people through the enrolment workflow on LocalStack, against a no-op Distributed Map
## over the same CSV; rows per second and $ per million rows (docs/enrolment.md, "On AWS"). Not run in CI.
bench-enrol: $(STAMP) localstack-up
	$(BIN)/python bench/enrol.py

## Regenerate derived files: docs/errors.md (catalogue) and the annex-derived standard data.
docs: $(STAMP)
	$(BIN)/healthbook docs --out docs/errors.md

standard: $(STAMP)
	$(BIN)/healthbook standard derive --spec ../shared/spec

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache .hypothesis
