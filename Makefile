# Two commands on a fresh machine:
#   make lab    set up .venv and open the workbook in JupyterLab (NO_BROWSER=1 for a headless machine)
#   make test   set up .venv and run the whole suite (what .ci/run runs)
#   make demo NB=06_cfg   a notebook as a dashboard, code hidden, for a projector (Voila)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
KERNEL_SPEC = $(VENV)/share/jupyter/kernels/$(KERNEL_NAME)/kernel.json
PORT ?= 8888
NO_BROWSER ?=
LAB_TOKEN ?=
KERNEL_NAME ?= diffusion-workbook
NB ?=
DIR ?=
OUT ?=
JOBS ?=
TIMEOUT ?= 120

.PHONY: lab test test-all demo site git-filter update venv kernel release grade grade-all checkpoints bench clean help

help:
	@echo "make lab      set up .venv, register the kernel, start JupyterLab on notebooks/00_start_here.ipynb"
	@echo "              (NO_BROWSER=1 to only print the URL; PORT=8888)"
	@echo "make test     set up .venv and run unit tests, nbval on every notebook, release and grading tests"
	@echo "make test-all the same, and grade every notebook with exercises end to end (not only 02 and 06): ~20 min more"
	@echo "make demo NB=06_cfg   serve one notebook as a dashboard with its code hidden (Voila; PORT, NO_BROWSER=1)"
	@echo "make site    execute every notebook and render the course site into site/ (offline; JOBS=cores; ~10 min)"
	@echo "make update  pull the course's next version (outputs of notebooks you ran are no obstacle)"
	@echo "make release  write student notebooks (solutions removed, outputs cleared) to release/"
	@echo "make grade NB=release/02_forward_reverse.ipynb   grade one student notebook"
	@echo "make grade-all DIR=submissions/   grade a class (one sub-folder per student): gradebook.csv, reports,"
	@echo "              feedback (OUT=dir for them, JOBS=cores, TIMEOUT=120 s per cell)"
	@echo "make checkpoints  retrain every shipped checkpoint from its recipe (slow: run it in the background)"
	@echo "make bench    run benchmarks/*.py: tables printed, figures saved in benchmarks/results/"

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -e .
	@touch $(STAMP)

venv: $(STAMP)

# The notebooks declare the kernel $(KERNEL_NAME): registered inside .venv (which the venv's Jupyter prefers, so
# tests and demos run this clone's Python) and, by `make kernel`/`make lab`, for the user (any Jupyter, VS Code).
$(KERNEL_SPEC): $(STAMP)
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL_NAME) --display-name "Diffusion workbook (.venv)" >/dev/null

kernel: $(KERNEL_SPEC)
	$(PY) -m ipykernel install --user --name $(KERNEL_NAME) --display-name "Diffusion workbook (.venv)" >/dev/null
	@echo "registered the Jupyter kernel '$(KERNEL_NAME)'"

# nbstripout as this repository's git filter: git reads the notebooks without outputs (cell ids kept)
git-filter:
	@if git rev-parse --git-dir >/dev/null 2>&1; then $(VENV)/bin/nbstripout --install && \
		git config filter.nbstripout.clean "'$(abspath $(PY))' -m nbstripout --keep-id" && \
		echo "git filter installed: notebooks reach git without their outputs (nbstripout)"; fi

# pull the course's next version: git first re-reads the notebooks through the filter (outputs are no change;
# edited cells are, and a pull that would overwrite them stops)
update: git-filter
	git add -u -- '*.ipynb'
	git pull --ff-only

lab: kernel git-filter
	$(VENV)/bin/jupyter lab notebooks/00_start_here.ipynb --port=$(PORT) --ServerApp.ip=127.0.0.1 \
		--ServerApp.root_dir=$(CURDIR) $(if $(NO_BROWSER),--no-browser) \
		$(if $(filter 0,$(shell id -u)),--allow-root) \
		$(if $(LAB_TOKEN),--IdentityProvider.token=$(LAB_TOKEN))

test: $(KERNEL_SPEC)
	$(PY) -m pytest -q tests --nbval-lax notebooks

test-all: $(KERNEL_SPEC)
	COURSE_GRADE_ALL=1 $(PY) -m pytest -q tests --nbval-lax notebooks

demo: $(KERNEL_SPEC)
	@test -n "$(NB)" || (echo "usage: make demo NB=06_cfg (a notebook's name, or a path to an .ipynb)" && exit 2)
	$(VENV)/bin/voila $(if $(filter %.ipynb,$(NB)),$(NB),notebooks/$(NB).ipynb) --port=$(PORT) --Voila.ip=127.0.0.1 \
		$(if $(NO_BROWSER),--no-browser) $(if $(LAB_TOKEN),--token=$(LAB_TOKEN)) --show_tracebacks=True \
		--VoilaConfiguration.extension_denylist='["@jupyter/nbgrader", "@jupyter-notebook/lab-extension", "@voila-dashboards/jupyterlab-preview"]'

release: venv
	$(PY) -m course.grading release

# every notebook executed (JOBS at a time, threads pinned) and rendered to site/: pages, student copies, link check
site: $(KERNEL_SPEC)
	$(PY) -m course.site --out site $(if $(JOBS),--jobs $(JOBS))

grade: venv
	@test -n "$(NB)" || (echo "usage: make grade NB=path/to/student_notebook.ipynb" && exit 2)
	$(PY) -m course.grading grade $(NB) --timeout $(TIMEOUT)

grade-all: venv
	@test -n "$(DIR)" || (echo "usage: make grade-all DIR=submissions/ [OUT=grades/] [JOBS=n] [TIMEOUT=120]" && exit 2)
	$(PY) -m course.grading grade-all $(DIR) --timeout $(TIMEOUT) $(if $(OUT),--out $(OUT)) $(if $(JOBS),--jobs $(JOBS))

checkpoints: venv
	$(PY) -m course.train all

bench: venv
	cd benchmarks && for script in fid_speed.py scrubber_latency.py league_table.py ddim_table.py sde_samplers.py \
		cfg_table.py pag_table.py lora_table.py ldm_table.py p2p_edits.py controlnet_table.py ddpm_weighting.py notebook_times.py \
		browser_latency.py threads_under_load.py; do \
		../$(PY) $$script || exit 1; done

clean:
	rm -rf release site site-executed .pytest_cache
