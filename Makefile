# Pouchfly build, test, demo and benchmark entry points.
GO      ?= go
BIN     := bin
PKGS    := ./...
GOFLAGS ?= -buildvcs=false
export GOFLAGS

.PHONY: all build test demo bench bench-local proto deps tools clean lint

all: build

## build: compile supernode, dfget into ./bin
build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/...

## proto: regenerate api/ from the .proto files (protoc from Debian, plugins pinned in go.mod)
proto:
	@command -v protoc >/dev/null || (apt-get update -qq && apt-get install -y -qq protobuf-compiler)
	@mkdir -p $(BIN)/tools
	$(GO) build -o $(BIN)/tools/ google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc
	PATH=$(CURDIR)/$(BIN)/tools:$$PATH protoc -I api \
	  --go_out=api --go_opt=paths=source_relative \
	  --go-grpc_out=api --go-grpc_opt=paths=source_relative \
	  $$(cd api && find . -name '*.proto' | sed 's|^\./||')

## deps: system packages the tests need (root; no-op when present)
deps:
	@./test/deps.sh

## test: everything CI runs
test: deps
	$(GO) vet $(PKGS)
	$(GO) test -count=1 -timeout 15m $(PKGS)

## demo: origin + supernode + 8 agents on loopback distribute a 256 MiB file
demo: build
	$(GO) build -o $(BIN)/pouchfly-demo ./test/demo
	$(BIN)/pouchfly-demo --bin $(BIN) --size 256MiB --peers 8 --report demo-report.json

## bench-local: loopback micro-benchmarks (throughput, RSS, scheduling)
bench-local: build
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 30m ./test/bench/...

## bench: the multi-host testbed benchmark (root)
bench: bench-local

clean:
	rm -rf $(BIN) demo-report.json
