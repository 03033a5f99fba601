# ccflow: train -> column-combine -> quantize -> render RTL/HLS -> simulate.
# `make` runs the whole flow on the built-in default; `make test` runs the tests.
# `make help` lists the targets and variables.

CONFIG ?= tiny
DATA   ?=
SIM    ?= icarus
SIMS   ?= icarus verilator
TOKENS ?= 64
ARGS   ?=
PY     ?= python3

CONFIG_FILE := $(if $(wildcard $(CONFIG)),$(CONFIG),configs/$(CONFIG).toml)
BUILD  ?= build/$(basename $(notdir $(CONFIG)))$(if $(DATA),-$(notdir $(abspath $(DATA))))
MODEL  := $(BUILD)/train/model.pt
CKPT   := $(BUILD)/train/checkpoint.pt
RTL    := $(BUILD)/rtl
REPORT := $(RTL)/report.json
SETUP  := build/.setup-done
CCFLOW := $(PY) -m ccflow
GEN_SOURCES := $(wildcard rtl_templates/* rtl_templates/cnn/* hls/* hls/cnn/*) \
               $(addprefix python/ccflow/,arrayconfig.py combine.py design.py fixedpoint.py quantize.py golden.py \
               generate.py hls.py flow.py pack.py cnn.py cnn_quantize.py cnn_generate.py cnn_hls.py)

.PHONY: all help setup train rtl sim sim-all hls summary test test-fast bench bench-combine bench-train \
        plots experiments quant-study cnn-experiments lint clean fpga bench-fpga bench-contention

all: sim-all hls summary ## the whole flow on CONFIG (default tiny): train, rtl, both simulators, HLS check, summary

help: ## list targets and variables
	@echo "ccflow make targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'
	@echo
	@echo "variables: CONFIG=$(CONFIG) (preset in configs/ or a .toml path)  DATA=$(DATA) (corpus folder/file)"
	@echo "           SIM=$(SIM)  SIMS=$(SIMS)  TOKENS=$(TOKENS) (stimulus tokens)  ARGS=$(ARGS) (extra train args)"
	@echo "           BUILD=$(BUILD) (output folder)  FPGA_ARGS=$(FPGA_ARGS) (extra ccflow fpga args: --xilinx, --freq MHZ, --require-timing, --synth-only, --router router2, --placer-density F, --placer-timing-weight N, --placer-critexp N, --no-bram-outreg)"

setup: $(SETUP) ## install iverilog + yosys (apt-get) and the Python package with pinned deps (pip)

$(SETUP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

train: $(SETUP) ## train CONFIG; resumes an interrupted run, sets aside a run of an older config
	@if [ -f $(CKPT) ] && [ $(CONFIG_FILE) -nt $(CKPT) ]; then \
	  old=$(BUILD)/train.$$(date +%Y%m%d-%H%M%S); echo "$(CONFIG_FILE) changed since the last run: moving it to $$old"; \
	  mv $(BUILD)/train $$old; fi
	$(CCFLOW) train --config $(CONFIG) --out $(BUILD)/train $(if $(DATA),--data $(DATA)) --resume $(ARGS)

$(MODEL): $(CONFIG_FILE) | $(SETUP)
	$(MAKE) --no-print-directory train

rtl: $(REPORT) ## quantize, pack, render Verilog + HLS C++ + ROMs into BUILD/rtl, score float vs fixed BPC

$(REPORT): $(MODEL) $(GEN_SOURCES)
	$(CCFLOW) rtl --checkpoint $(MODEL) --out $(RTL) --tokens $(TOKENS)

sim: $(REPORT) ## cocotb regression of BUILD/rtl on SIM (icarus or verilator); does not regenerate
	$(CCFLOW) sim --rtl $(RTL) --sim $(SIM)

sim-all: $(REPORT) ## the cocotb regression on every simulator in SIMS
	$(CCFLOW) sim --rtl $(RTL) --sim $(SIMS)

hls: $(REPORT) ## compile the HLS C++ with g++ and check it against the golden model
	$(CCFLOW) hls --rtl $(RTL)

summary: ## print corpus, BPC, cells, utilization, cycles per token and simulation verdicts
	@$(CCFLOW) summary --rtl $(RTL)

test: $(SETUP) ## the whole test suite (pytest, including the cocotb benches on both simulators)
	$(PY) -m pytest

test-fast: $(SETUP) ## the test suite without the HDL simulations
	$(PY) -m pytest -m "not sim"

lint: $(REPORT) ## pyverilog parse, verilator --lint-only -Wall and a yosys resource estimate of BUILD/rtl
	$(CCFLOW) lint --rtl $(RTL)

FPGA_ARGS ?=

fpga: $(REPORT) ## synthesize, place and route BUILD/rtl for the ECP5 LFE5U-85F (yosys + nextpnr): resources, Fmax, tokens/s
	$(CCFLOW) fpga --rtl $(RTL) $(FPGA_ARGS)

bench: bench-combine bench-train bench-contention bench-fpga ## all benchmarks

bench-combine: $(SETUP) ## column combining: ours vs a naive greedy merge, random and paper-size matrices
	$(PY) bench/bench_combine.py

bench-train: $(SETUP) ## time per training step: dense vs masked+combining vs torch.nn.LSTM
	$(PY) bench/bench_train.py

bench-contention: $(SETUP) ## tiny training alone, next to a busy process, two at once: time ratios (idle machine)
	$(PY) bench/bench_contention.py

bench-fpga: $(REPORT) ## FPGA targets on BUILD/rtl: synthesis time/memory, Fmax, cycles per token, tokens/s
	$(PY) bench/bench_fpga.py --rtl $(RTL)

experiments: $(SETUP) ## the BPC-vs-array-cells frontier on ptbc-small (small preset) -> docs/results.md
	$(PY) bench/experiments.py

cnn-experiments: $(SETUP) ## CNNs in the paper's shape (LeNet-5, vgg-small on digits) -> docs/cnn_results.md
	$(PY) bench/cnn_experiments.py

QUANT_MODEL ?= build/experiments/d0.25-cpcc-rb-0.5/model.pt
quant-study: $(SETUP) ## weight sections x weight/activation bits, fixed-point BPC of QUANT_MODEL -> docs/quantization.md
	$(PY) bench/quant_study.py --model $(QUANT_MODEL)

plots: ## PNG training curves of BUILD/train/log.csv into BUILD/plots
	$(CCFLOW) plots $(BUILD)/train/log.csv --out $(BUILD)/plots

clean: ## remove build/ (generated files, checkpoints, caches)
	rm -rf build
