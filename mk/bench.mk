# Benchmark (included by the top-level Makefile).
# See docs/performance.md.
#
#   make bench                  full run (~40 min on a 2-core Xeon, 47 on an AVX2 EPYC): bench/results/latest.{json,md} + PNG plots
#   make bench ARGS=--quick     every goal on smaller samples, without the what-if stack and the peer (~12 min)
#   make bench ARGS="--device cuda"   base on the GPU (STT_DEVICE=cuda)
#   make bench-peer             install the peer (WhisperLive) into .cache/peer-venv; `make bench` tries it
#   make bench-file-live        live chunk latency while a 30-minute file transcribes (~15 min; docs/reliability.md)
#   make bench-open-loop        constant arrival rates up to 4x capacity: fast 429s or a latency collapse? (~5 min)
VENV ?= .venv
PY ?= $(VENV)/bin/python
PYTHON ?= python3
PEER_VENV ?= .cache/peer-venv
ARGS ?=
# WhisperLive's server needs PyTorch and pins its own faster-whisper; its other requirements
# (OpenVINO, openai-whisper, PyAudio, ...) serve backends and clients the bench does not use.
PEER_PACKAGES ?= torch==2.14.1 faster-whisper==1.2.0 tokenizers==0.20.3 "numpy<2.5" websockets websocket-client \
  scipy fastapi uvicorn python-multipart prometheus-client soundfile "setuptools>=77"

.PHONY: bench bench-prepare bench-peer bench-file-live bench-open-loop

bench-prepare: models corpus

$(PEER_VENV)/.installed:
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install --quiet --no-deps whisper-live==0.10.0
	$(PEER_VENV)/bin/pip install --quiet $(PEER_PACKAGES)
	@touch $@

bench-peer: $(PEER_VENV)/.installed ## Install WhisperLive (the peer the bench compares with; ~6 GB with PyTorch)

bench: bench-prepare ## Benchmark everything (~40 min on a 2-core Xeon; ARGS=--quick for a short run); writes bench/results/
	@case " $(ARGS) " in *" --quick "*|*" --no-peer "*) ;; *) \
	  $(MAKE) --no-print-directory -f $(firstword $(MAKEFILE_LIST)) bench-peer PY=$(PY) || \
	  echo "bench: the peer could not be installed; the results will say why";; esac
	$(PY) -m bench $(ARGS)

bench-file-live: bench-prepare ## Live latency while a long file transcribes (ARGS="--streams 4 --file-minutes 30")
	$(PY) -m bench.file_live $(ARGS)

bench-open-loop: bench-prepare ## Open-loop overload test of one base (ARGS=--compare adds the unbounded queue)
	$(PY) -m bench.open_loop $(ARGS)

.PHONY: bench-autoscale
bench-autoscale: ## Simulated 24 h of live streams through the GPU autoscaling rule (seconds): bench/results/autoscale.json
	$(PY) -m bench.autoscale_sim $(ARGS)
