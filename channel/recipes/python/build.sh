#!/bin/bash
# Copy the staged interpreter into $PREFIX, then rewrite its old install prefix to
# $PREFIX in text files, so the package records prefix placeholders and the
# installer writes each target prefix back (as conda-forge's python does).
set -euo pipefail
OLD_PREFIX=$(cat "$SWSTACK_PYTHON_STAGE.old-prefix")
cp -a "$SWSTACK_PYTHON_STAGE"/. "$PREFIX"/
grep -rlIZ --fixed-strings -- "$OLD_PREFIX" "$PREFIX" \
  | xargs -0 --no-run-if-empty sed -i "s|$OLD_PREFIX|$PREFIX|g"
# Byte-compile the standard library once, with pycs that need no source check: the
# installed tree is read-only for its users. Files that hold the prefix are left out:
# their pycs would carry it inside marshalled strings the installer cannot rewrite.
# PYTHONDONTWRITEBYTECODE: the modules compileall itself imports would otherwise get
# timestamp pycs (holding the sources' mtimes, i.e. the day CPython was compiled) that
# compileall then takes as current; -f rewrites any pyc that is there all the same.
PYTHONDONTWRITEBYTECODE=1 "$PREFIX/bin/python3" -m compileall -q -f -j 2 --invalidation-mode unchecked-hash \
  -x '(_sysconfigdata|config-[0-9.]+-|site-packages/pip/_vendor/distlib/.*\.exe)' \
  "$PREFIX/lib/python3"* >/dev/null
