#!/usr/bin/env bash
# Install napari-samed2 and everything it needs into ./.venv, from nothing but Python 3.10+
# and (on Debian/Ubuntu) apt: the X/OpenGL/Qt system libraries napari needs, PyTorch, sam2,
# then the plugin itself in editable mode with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(
  xvfb xauth libgl1 libgl1-mesa-dri libegl1 libfontconfig1 libdbus-1-3 libxkbcommon0
  libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0
  libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0
)

install_system_packages() {
  if ! command -v apt-get >/dev/null; then
    echo "Not a Debian-like system: install Xvfb, Mesa OpenGL and Qt's xcb libraries with your package manager." >&2
    return 0
  fi
  local missing=()
  for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "Installing system packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_system_packages

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip setuptools wheel
# PyTorch first: sam2 ships as a source distribution whose build imports torch. Building it
# without isolation against this torch avoids pip fetching a second multi-GB torch to build it.
pip install "torch>=2.5.1" torchvision
SAM2_BUILD_CUDA=0 pip install --no-build-isolation "sam2==1.1.0"
pip install -e ".[testing]"
echo "napari-samed2 installed in .venv"
