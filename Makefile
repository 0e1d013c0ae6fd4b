# Pouchfly build, test, demo and benchmark entry points.
GO      ?= go
BIN     := bin
PKGS    := ./...
GOFLAGS ?= -buildvcs=false
export GOFLAGS

.PHONY: all build test demo bench bench-local chaos proto deps tools clean lint fuzz

all: build

## build: compile supernode, dfget into ./bin
build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/...
	CGO_ENABLED=0 $(GO) build -o $(BIN)/pouch-init ./cmd/pouch-init

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
	@./test/deps.sh ctr:containerd containerd:containerd skopeo:skopeo ip:iproute2 tc:iproute2 runc:runc chromium:chromium \
	  lxcfs:lxcfs mkfs.ext4:e2fsprogs busybox:busybox-static unshare:util-linux fusermount3:fuse3 free:procps

## test: everything CI runs
test: deps
	$(GO) vet $(PKGS)
	$(GO) test -count=1 -timeout 15m $(PKGS)

## fuzz: every `go test -fuzz` target for FUZZTIME each, one after another (test/fuzz.sh);
## FUZZ=regexp picks targets ("piece/", "FuzzMirror"). Crashers land in <pkg>/testdata/fuzz/.
FUZZTIME ?= 20s
FUZZ     ?= .
fuzz:
	FUZZTIME=$(FUZZTIME) FUZZ='$(FUZZ)' GO=$(GO) ./test/fuzz.sh

## demo: origin + registry + supernode + 8 agents on loopback: a 256 MiB file and a multi-layer image to every host
demo: build
	$(GO) build -o $(BIN)/pouchfly-demo ./test/demo
	$(BIN)/pouchfly-demo --bin $(BIN) --size 256MiB --peers 8 --report demo-report.json

## bench-local: loopback benchmarks (1 GiB p2p throughput, agent peak RSS, scheduler cost at 1000 peers) → table + bench-local-report.json
bench-local:
	@mkdir -p $(BIN)
	$(GO) test -run '^$$' -bench 'ChooseParents1000|NeedParents|Register1000' -benchtime 2s -benchmem -count 1 \
	  -timeout 5m ./scheduler/ > $(BIN)/bench-local-scheduler.txt 2>&1 || echo "scheduler benchmarks FAILED" >> $(BIN)/bench-local-scheduler.txt; \
	  cat $(BIN)/bench-local-scheduler.txt
	$(GO) build -o $(BIN)/bench-local ./test/bench/local
	timeout 25m $(BIN)/bench-local --go $(GO) --size 1GiB --runs 3 --report bench-local-report.json \
	  --sched-bench $(BIN)/bench-local-scheduler.txt --profile $(BIN)/bench-local-cpu.prof
	timeout 15m $(GO) run ./test/bench/mirror --size 1GiB --report bench-mirror-report.json
	POUCHFLY_BENCH=1 POUCHFLY_BENCH_REPORT=$(CURDIR)/bench-engine-report.json $(GO) test -count=1 -timeout 10m -run TestBenchRunLatency -v ./test/engine/

## bench: the multi-host testbed benchmark (root, issue #4): direct vs p2p vs BitTorrent on network
## namespaces with tc tbf caps → bench-report.json, bench-table.md, docs/img/*.png, docs/benchmarks.md.
## Override any default: make bench BENCH_HOSTS=1,8 BENCH_SIZE=16MiB BENCH_FLAGS='--agent-set peer.max_parallel_pieces=8'
BENCH_SIZE       ?= 64MiB
BENCH_HOSTS      ?= 1,2,4,8,16,32
BENCH_MODES      ?= direct,p2p,bittorrent
BENCH_HOST_CAP   ?= 50
BENCH_ORIGIN_CAP ?= 200
BENCH_SN_CAP     ?= 200
BENCH_TIMEOUT    ?= 90m
BENCH_FLAGS      ?=
BENCH_ARGS = --size $(BENCH_SIZE) --hosts $(BENCH_HOSTS) --modes $(BENCH_MODES) --host-cap $(BENCH_HOST_CAP) \
	  --origin-cap $(BENCH_ORIGIN_CAP) --supernode-cap $(BENCH_SN_CAP) --timeout $(BENCH_TIMEOUT) $(BENCH_FLAGS)
bench: build
	$(GO) build -o $(BIN)/pouchfly-bench ./test/bench/testbed
	timeout -s INT -k 3m $(BENCH_TIMEOUT) $(BIN)/pouchfly-bench --bin $(BIN) --report bench-report.json \
	  --table $(BIN)/bench-table.md --img-dir docs/img --docs docs/benchmarks.md \
	  --command "make bench $(MAKEOVERRIDES)" $(BENCH_ARGS)

## chaos: the chaos suite on the multi-host testbed (root, issue #7): agents and the supernode SIGKILLed
## and restarted, a malicious host, a trickling host, origin 5xx/resets/stalls, a full disk (tmpfs), 1000 concurrent requests,
## on CHAOS_HOSTS hosts with tc tbf caps → chaos-report.json (§5 objects + figures + checks) and a table.
## The loopback variant of the same scenarios runs in `make test` (go test ./test/chaos).
CHAOS_HOSTS     ?= 16
CHAOS_SCENARIOS ?= kill,supernode,malicious,trickler,origin,disk,requests
CHAOS_TIMEOUT   ?= 30m
CHAOS_FLAGS     ?=
chaos: build
	$(GO) build -o $(BIN)/pouchfly-chaos ./test/chaos/cmd/pouchfly-chaos
	timeout -s INT -k 2m $(CHAOS_TIMEOUT) $(BIN)/pouchfly-chaos --bin $(BIN) --hosts $(CHAOS_HOSTS) \
	  --scenarios $(CHAOS_SCENARIOS) --timeout $(CHAOS_TIMEOUT) --report chaos-report.json --table $(BIN)/chaos-table.md $(CHAOS_FLAGS)

clean:
	rm -rf $(BIN) demo-report.json
