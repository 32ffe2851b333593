#!/usr/bin/env bash
# Proof of the lower bounds: every direct dependency at exactly the floor that setup.py and
# pyproject.toml (extras heic and test) declare, everything else as pip resolves it, then pytest.
# Not run by CI (about 13 minutes on 2 shared cores, the install included). Run it after
# changing a floor or a use of a dependency's newer feature:
#
#   bash .ci/floors.sh                        # the whole suite
#   bash .ci/floors.sh tests/test_app.py -x   # pytest arguments pass through
#
# The overlay venv borrows a base venv's site-packages through a .pth file (torch alone is ~6 GB;
# torch and torchvision are pinned with ==, so the base venv already holds their floors); its own
# site-packages come first, so the floors installed there shadow the base's versions. The base venv
# is never written to. FLOORS_BASE: the base venv (default .venv, as .ci/run makes it);
# FLOORS_DIR: where to build the overlay (default a fresh temporary folder, removed afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
base=$(realpath "${FLOORS_BASE:-.venv}")
base_site=$("$base/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [[ -n "${FLOORS_DIR:-}" ]]; then overlay=$FLOORS_DIR; else
  overlay=$(mktemp -d /tmp/clipsearch-floors.XXXXXX)
  trap 'rm -rf "$overlay"' EXIT
fi

# Every requirement with a lower bound, pinned to it (`x>=1.2,<2` → `x==1.2`; PEP 440: 1.2 == 1.2.0).
pins=$("$base/bin/python" - <<'EOF'
import re, setuptools, tomllib
reqs = []
setuptools.setup = lambda **kw: reqs.extend(kw["install_requires"])
exec(open("setup.py").read())  # the CPU FAISS build unless CLIPSEARCH_FAISS says otherwise
for extra in ("heic", "test"):
    reqs += tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"][extra]
for req in dict.fromkeys(reqs):
    match = re.match(r"^([A-Za-z0-9_.\-]+)\s*(?:==|>=)\s*([0-9][^,;\s]*)", req)
    if not match:
        raise SystemExit(f"no lower bound: {req!r}")
    print(f"{match[1]}=={match[2]}")
EOF
)
echo "floors: $(echo $pins)"

"$base/bin/python" -m venv "$overlay"
overlay_site=$("$overlay/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$base_site" > "$overlay_site/zz-base-venv.pth"
# --only-binary: a floor without a wheel for this Python is no floor. Output kept for a failed resolve.
# shellcheck disable=SC2086
if ! "$overlay/bin/pip" install --only-binary :all: -e '.[heic,test]' $pins > "$overlay/pip.log" 2>&1; then
  grep -v '^WARNING: Location' "$overlay/pip.log" | tail -30
  exit 1
fi

# Each floor must be the version imported, from the overlay (not a newer one from the base venv).
"$overlay/bin/python" - $pins <<'EOF'
import sys
from importlib import metadata
wrong = []
for pin in sys.argv[1:]:
    name, floor = pin.split("==")
    dist = metadata.distribution(name)
    where = "overlay" if sys.prefix in str(dist.locate_file("")) else "base venv"
    print(f"  {name:18} {dist.version:12} ({where})")
    if dist.version.split("+")[0] not in (floor, floor + ".0", floor + ".0.0"):
        wrong.append(f"{name}: {dist.version} installed, floor {floor}")
if wrong:
    raise SystemExit("not at the floor: " + "; ".join(wrong))
EOF

started=$SECONDS
status=0
PYTHONPATH=$PWD "$overlay/bin/python" -m pytest "$@" || status=$?
echo "floors: pytest exited $status after $(( (SECONDS - started) / 60 )) min"
exit $status
