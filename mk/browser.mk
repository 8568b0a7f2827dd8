# The browser page served by the proxy at / (services/proxy/static/) and its real-browser test.
# Included by the top-level Makefile; also works alone: `make -f mk/browser.mk browser`.
#
#   make browser              Chromium and chromedriver (Debian packages) when missing; optional
#   make test-browser         only the page's tests (headless Chromium on a stack of their own)
#   make browser-screenshot   the same, and copy the screenshot to docs/images/browser-page.png
VENV ?= .venv
PY ?= $(VENV)/bin/python
NEED_DEBS ?= bash hack/need-debs.sh

.PHONY: browser test-browser browser-screenshot

browser: ## Chromium + chromedriver for the browser-page test (optional: without them that test skips)
	@$(NEED_DEBS) --optional chromium chromium-driver

test-browser: models corpus browser ## The browser page's tests only (headless Chromium, real stack, real speech)
	$(PY) -m pytest -q -rs tests/browser

browser-screenshot: models corpus browser ## Run the browser test and refresh docs/images/browser-page.png
	STT_UPDATE_SCREENSHOT=1 $(PY) -m pytest -q -rs tests/browser -k live_transcription
