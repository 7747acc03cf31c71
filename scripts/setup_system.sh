#!/usr/bin/env bash
# Debian packages the project uses: the offline Fashion-MNIST data set, the photographs of natural-patches
# (MATE's nature backgrounds and KDE's wallpapers) and Chromium for the browser test.
# Installs them when running as root with apt-get; otherwise says what is missing and carries on
# (the app then falls back to the mnist-5k subset, and the tests that need them are skipped with that reason).
set -u
missing=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
[ -f /usr/share/backgrounds/mate/nature/Aqua.jpg ] || missing+=(mate-backgrounds)
[ -f /usr/share/wallpapers/Path/contents/images/2560x1600.jpg ] || missing+=(plasma-workspace-wallpapers)
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages: ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || echo "warning: could not install ${missing[*]}; continuing without them"
else
  echo "note: Debian packages not installed (need root): ${missing[*]}."
  echo "      sudo apt-get install ${missing[*]}   # Fashion-MNIST, natural-patches, the browser test"
fi
exit 0
