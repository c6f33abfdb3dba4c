#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder image: install the pinned workbook
# environment (the zip holds the instructor's workbook in workbook/, run_autograder and this file).
set -euo pipefail
apt-get update -q && apt-get install -y -q python3 python3-venv make
cd /autograder/source/workbook
make venv
