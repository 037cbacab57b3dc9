# The two commands: `make dev` runs everything locally, `make test` runs the tests.

GO          ?= go
GOARCH_LAMBDA ?= arm64
LAMBDA_FLAGS = CGO_ENABLED=0 GOOS=linux GOARCH=$(GOARCH_LAMBDA)
LAMBDA_BUILD = $(LAMBDA_FLAGS) $(GO) build -tags lambda.norpc -trimpath -ldflags='-s -w'
STATICCHECK  = $(GO) tool staticcheck

.PHONY: dev run-server run-processor run-local-webhook run-example-model test test-browser lint fmt build bench loadtest schema \
	build-SubmitFunction build-StatusFunction build-ProcessTickFunction build-DeliverWebhookFunction

## dev: everything in one process (API :9001, processor :9002, webhook receiver :9003, example model :9004)
dev:
	$(GO) build -o bin/asyncdev ./localdev/cmd/asyncdev
	exec bin/asyncdev dev

## run-server: the API alone on :9001, probes and metrics on :9005, against DATABASE_URL
run-server:
	$(GO) build -o bin/asyncdev ./localdev/cmd/asyncdev
	exec bin/asyncdev server

## run-processor: process-tick and deliver-webhook loops, probes and metrics on :9002
run-processor:
	$(GO) build -o bin/asyncdev ./localdev/cmd/asyncdev
	exec bin/asyncdev processor

## run-local-webhook: the local webhook receiver on :9003
run-local-webhook:
	$(GO) build -o bin/asyncdev ./localdev/cmd/asyncdev
	exec bin/asyncdev webhook

## run-example-model: the example model alone on :9004, a deployment's model for trying the service
run-example-model:
	$(GO) build -o bin/examplemodel ./localdev/cmd/examplemodel
	exec bin/examplemodel

## test: every test, with the race detector, against TEST_DATABASE_URL (else a throwaway container or initdb cluster)
test:
	$(GO) test -race -count=1 -timeout 20m ./...

## test-browser: the console's operator story in headless Chromium (/usr/bin/chromium, playwright-core from
## console-e2e/); starts bin/asyncdev dev on ports 19805-19808 with a fresh database on TEST_DATABASE_URL's server;
## screenshots go to artifacts/console/
test-browser:
	$(GO) build -o bin/asyncdev ./localdev/cmd/asyncdev
	cd console-e2e && { [ -d node_modules/playwright-core ] || PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund; }
	cd console-e2e && node --test console.test.mjs

## lint: gofmt, go vet and staticcheck must be silent
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt: $$out"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

## bench: throughput and status-read benchmarks against TEST_DATABASE_URL (else a Postgres container), side by side in one
## run; the output goes to bench-results.txt, followed by a summary table
bench: SHELL := /bin/bash
bench:
	@[ -n "$$TEST_DATABASE_URL" ] || echo "bench: TEST_DATABASE_URL is unset; trying a Postgres container"
	set -o pipefail; $(GO) test -p 1 -timeout 20m -run '^$$' -bench . -benchtime 3x ./functions/... 2>&1 | tee bench-results.txt
	@grep -q 'req/s' bench-results.txt || { echo "bench: no figures (no database?): set TEST_DATABASE_URL"; exit 1; }
	@summary=$$(awk '/req\/s|late-ms|p50-ms/ { line = sprintf("%-45s", $$1); \
		for (i = 3; i < NF; i += 2) if ($$(i+1) != "ns/op") line = line sprintf(" %10s %s", $$i, $$(i+1)); print line }' \
		bench-results.txt); printf '\nsummary\n%s\n' "$$summary" | tee -a bench-results.txt

## loadtest: drive a running service through its public API (LOADTEST_URL, LOADTEST_API_KEY,
## LOADTEST_WEBHOOK_SECRET, LOADTEST_CONCURRENCY, LOADTEST_COUNT; or ARGS='-count 20000 ...')
loadtest:
	$(GO) build -o bin/asyncload ./localdev/cmd/asyncload
	bin/asyncload $(ARGS)

## schema: regenerate db/schema.sql from a scratch database
schema:
	./db/dump-schema.sh

## build: every function's bootstrap under bin/<Function>/
build: build-SubmitFunction build-StatusFunction build-ProcessTickFunction build-DeliverWebhookFunction

# SAM calls build-<Function> with ARTIFACTS_DIR set (BuildMethod: makefile).
ARTIFACTS_DIR ?= bin/$(subst build-,,$@)

build-SubmitFunction:
	$(LAMBDA_BUILD) -o $(ARTIFACTS_DIR)/bootstrap ./functions/submit/lambda
build-StatusFunction:
	$(LAMBDA_BUILD) -o $(ARTIFACTS_DIR)/bootstrap ./functions/status/lambda
build-ProcessTickFunction:
	$(LAMBDA_BUILD) -o $(ARTIFACTS_DIR)/bootstrap ./functions/processtick/lambda
build-DeliverWebhookFunction:
	$(LAMBDA_BUILD) -o $(ARTIFACTS_DIR)/bootstrap ./functions/deliverwebhook/lambda
