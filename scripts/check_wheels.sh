#!/usr/bin/env bash
# `pip install "trellis-mv[plugins]"` from wheels, as a user would get it: build the wheels of
# trellis-mv and of every distribution under plugins/, install the extra from them into a
# fresh virtualenv, and check that `trellis-mv list` shows every aggregator with the
# distribution that provides it.
#
#   scripts/check_wheels.sh            # PYTHON builds the wheels (default .venv/bin/python),
#                                      # VENV_PYTHON makes the fresh virtualenv (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
VENV_PYTHON=${VENV_PYTHON:-python3}
TORCH=${TORCH:-torch==2.13.0}
EXPECTED="stochastic:trellis-mv single:trellis-mv multidiffusion:trellis-mv weighted:trellis-mv-weighted
concat:trellis-mv-consistency consensus:trellis-mv-consistency
visibility:trellis-mv-spatial attention:trellis-mv-spatial robust:trellis-mv-spatial"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$SECONDS

# 1. wheels, built from what git would ship (tracked and unignored files), so that no stale
#    build/ directory of the checkout can leak into them; no build isolation, no network
mkdir -p "$work/src" "$work/wheels"
git ls-files -co --exclude-standard -z \
    | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done \
    | tar --null -T - -cf - | tar -xf - -C "$work/src"
for dir in "$work/src" "$work"/src/plugins/*/; do
    grep -q '^\[tool\.comfy\]' "$dir/pyproject.toml" && continue  # a ComfyUI custom node folder, not a distribution
    "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation --no-index -w "$work/wheels" "$dir"
done
echo "wheels: $(cd "$work/wheels" && ls | tr '\n' ' ')"

# 2. a fresh virtualenv: the CPU build of torch first (so that no other build is pulled in),
#    then the extra, with our wheels as a source of distributions
"$VENV_PYTHON" -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q "$TORCH"
"${pip[@]}" install -q --find-links "$work/wheels" --report "$work/report.json" "trellis-mv[plugins]"

# 3. every trellis-mv distribution came from the wheels just built, not from an index
"$work/venv/bin/python" - "$work/report.json" "$work/wheels" <<'EOF'
import json, pathlib, sys
report, wheels = json.loads(pathlib.Path(sys.argv[1]).read_text()), pathlib.Path(sys.argv[2]).resolve().as_uri()
ours = {i["metadata"]["name"]: i["download_info"]["url"] for i in report["install"]
        if i["metadata"]["name"].startswith("trellis-mv")}
wrong = {name: url for name, url in ours.items() if not url.startswith(wheels)}
missing = {"trellis-mv", "trellis-mv-weighted", "trellis-mv-consistency", "trellis-mv-spatial"} - set(ours)
if wrong or missing:
    sys.exit(f"not installed from the built wheels: {wrong or ''} {sorted(missing) or ''}")
EOF

# 4. the aggregators, listed from outside the checkout
listing=$(cd "$work" && "$work/venv/bin/trellis-mv" list --strict)
echo "$listing"
status=0
for pair in $EXPECTED; do
    name=${pair%%:*} dist=${pair#*:}
    if ! awk -v n="$name" -v d="$dist" '$1 == n && $2 == d { found = 1 } END { exit !found }' <<<"$listing"; then
        echo "check_wheels: aggregator $name from $dist is missing from \`trellis-mv list\`" >&2
        status=1
    fi
done
[ "$status" -eq 0 ] && echo "check_wheels: trellis-mv[plugins] installs from wheels and lists every aggregator ($((SECONDS - start)) s)"
exit "$status"
