#!/bin/bash
# Copy the staged interpreter into $PREFIX, then rewrite its old install prefix to
# $PREFIX in text files, so the package records prefix placeholders and the
# installer writes each target prefix back (as conda-forge's python does).
set -euo pipefail
cp -a "$SWSTACK_PYTHON_STAGE"/. "$PREFIX"/
grep -rlIZ --fixed-strings -- "$SWSTACK_PYTHON_OLD_PREFIX" "$PREFIX" \
  | xargs -0 --no-run-if-empty sed -i "s|$SWSTACK_PYTHON_OLD_PREFIX|$PREFIX|g"
