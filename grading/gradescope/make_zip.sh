#!/usr/bin/env bash
# Build the zip to upload as a Gradescope programming assignment's autograder:
#   bash grading/gradescope/make_zip.sh [OUT.zip]
# It holds setup.sh and run_autograder at the top and the instructor's workbook (solutions included: the zip
# stays with the instructor and Gradescope) in workbook/, without .venv, release/ or git history.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$(realpath -m "${1:-$root/gradescope-autograder.zip}")
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$here/setup.sh" "$here/run_autograder" "$stage/"
git -C "$root" archive --format=tar --prefix=workbook/ HEAD | tar -x -C "$stage"
rm -f "$out"
(cd "$stage" && python3 -m zipfile -c "$out" setup.sh run_autograder workbook)
echo "wrote $out"
