#!/usr/bin/env bash
# prepare.sh — builds the demo model's training corpus and tokenizer from
# Debian packages (run on a development machine with apt; no GPU needed).
#
#   tools/demo/prepare.sh [OUT]      (default OUT: .demo-data, git-ignored)
#
# Downloads the text packages with `apt-get download` (nothing is installed),
# unpacks them under OUT/root, then tools/demo/prepare.py writes
#   OUT/tokenizer.json   byte-level BPE trained on the training split
#   OUT/train.u16.xz     training tokens (uint16, little-endian, xz)
#   OUT/val.u16.xz       held-out tokens
#   OUT/sources.json     what went in: package, version, licence, bytes, docs
# The Debian Reference (debian-reference-en) is the demo's textbook and is
# never part of the corpus.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-.demo-data}
pkgs="dict-gcide bible-kjv bible-kjv-text fortunes fortunes-min manpages manpages-dev"
mkdir -p "$out/debs" "$out/root"
(cd "$out/debs" && apt-get download $pkgs)
for deb in "$out"/debs/*.deb; do
	dpkg-deb -x "$deb" "$out/root"
	dpkg-deb -f "$deb" Package Version | paste -sd' '
done >"$out/packages.txt"
python3 tools/demo/prepare.py --root "$out/root" --packages "$out/packages.txt" --out "$out"
