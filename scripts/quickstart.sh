#!/usr/bin/env bash
# Set up dermbatch and classify the 245 full-resolution HAM10000 images on the embedded
# default (SQLite in ./dermbatch.db, no services). DATA defaults to ../shared/data/ham10000.
set -euo pipefail
cd "$(dirname "$0")/.."

data="${DATA:-../shared/data/ham10000}"
bash scripts/setup.sh
.venv/bin/dermbatch data link-full-resolution "$data" demo-images
.venv/bin/dermbatch classify demo-images
echo "Next: .venv/bin/dermbatch results latest --format csv > results.csv"
