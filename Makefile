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
	@./test/deps.sh ctr:containerd containerd:containerd skopeo:skopeo ip:iproute2 tc:iproute2 runc:runc

## test: everything CI runs
test: deps
	$(GO) vet $(PKGS)
	$(GO) test -count=1 -timeout 15m $(PKGS)

## demo: origin + registry + supernode + 8 agents on loopback: a 256 MiB file and a multi-layer image to every host
demo: build
	$(GO) build -o $(BIN)/pouchfly-demo ./test/demo
	$(BIN)/pouchfly-demo --bin $(BIN) --size 256MiB --peers 8 --report demo-report.json

## bench-local: loopback benchmarks (1 GiB p2p throughput, agent peak RSS, scheduler cost at 1000 peers) → table + bench-local-report.json
bench-local:
	@mkdir -p $(BIN)
	$(GO) test -run '^$$' -bench 'ChooseParents1000|NeedParents1000|Register1000' -benchtime 2s -benchmem -count 1 \
	  -timeout 5m ./scheduler/ > $(BIN)/bench-local-scheduler.txt 2>&1 || echo "scheduler benchmarks FAILED" >> $(BIN)/bench-local-scheduler.txt; \
	  cat $(BIN)/bench-local-scheduler.txt
	$(GO) build -o $(BIN)/bench-local ./test/bench/local
	timeout 25m $(BIN)/bench-local --go $(GO) --size 1GiB --runs 3 --report bench-local-report.json \
	  --sched-bench $(BIN)/bench-local-scheduler.txt --profile $(BIN)/bench-local-cpu.prof

## bench: the multi-host testbed benchmark (root)
bench: bench-local

clean:
	rm -rf $(BIN) demo-report.json
