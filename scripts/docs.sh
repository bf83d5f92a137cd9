#!/usr/bin/env bash
# make docs: create/reuse .venv with the docs extra and build the site into site/ in strict mode
# (a broken link or anchor, a missing page, a page left out of the nav fail). The reference pages
# are generated from the code during the build (docs/gen_reference.py); nothing is fetched.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/venv.sh
ensure_venv docs

export NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true  # the theme's and a plugin's banners
.venv/bin/mkdocs build --strict "$@"
