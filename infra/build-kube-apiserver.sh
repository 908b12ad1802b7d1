#!/usr/bin/env bash
# Build a real kube-apiserver (v1.20.2) and fetch etcd for the Kubernetes test tier, into a cache dir outside the
# checkout. No registry ships a kube-apiserver binary; Debian bookworm's *source* package `kubernetes` is the full
# upstream tree with vendor/, built with Debian's Go 1.19. Nothing is installed system-wide: packages are unpacked
# with `dpkg -x` into the cache. Reuses the cache when the binaries are present (second run: instant).
#
#   infra/build-kube-apiserver.sh            # -> $PLE_KUBE_CACHE/bin/{kube-apiserver,etcd}
#   PLE_KUBE_CACHE=/somewhere infra/build-kube-apiserver.sh
#
# Cost on a 2-core machine: ~9 CPU-minutes (~5 min wall idle). Run it under `nice -n 19` on shared machines.
set -euo pipefail

CACHE="${PLE_KUBE_CACHE:-$HOME/.cache/ple-platform/kube}"
K8S_VERSION="1.20.5+really1.20.2-1.1+deb12u1"
BIN="$CACHE/bin"
mkdir -p "$BIN"

if [[ -x "$BIN/kube-apiserver" && -x "$BIN/etcd" ]]; then
    echo "kube-apiserver and etcd already in $BIN (delete it to rebuild)"
    exit 0
fi

APT="$CACHE/apt"
mkdir -p "$APT/lists/partial" "$APT/archives/partial" "$CACHE/debs" "$CACHE/root" "$CACHE/src"
cat > "$APT/sources.list" <<SRC
deb http://deb.debian.org/debian bookworm main
deb-src http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian-security bookworm-security main
deb-src http://deb.debian.org/debian-security bookworm-security main
SRC
APT_OPTS=(-o "Dir::Etc::sourcelist=$APT/sources.list" -o "Dir::Etc::sourceparts=-"
          -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache::archives=$APT/archives" -o "APT::Get::List-Cleanup=0")

echo "== apt index (throwaway, in $APT)"
apt-get "${APT_OPTS[@]}" -qq update

echo "== toolchain and etcd, unpacked into $CACHE/root"
( cd "$CACHE/debs" && apt-get "${APT_OPTS[@]}" -qq download \
    golang-1.19-go golang-1.19-src rsync jq libjq1 libonig5 libpopt0 etcd-server )
for deb in "$CACHE"/debs/*.deb; do dpkg -x "$deb" "$CACHE/root"; done
cp "$CACHE/root/usr/bin/etcd" "$BIN/etcd"

echo "== kubernetes source $K8S_VERSION"
if [[ ! -d "$CACHE/src/.go/src/k8s.io/kubernetes" ]]; then
    ( cd "$CACHE/src" && apt-get "${APT_OPTS[@]}" -qq source --download-only "kubernetes=$K8S_VERSION" )
    orig=$(ls "$CACHE"/src/kubernetes_*.orig.tar.* | head -1)
    mkdir -p "$CACHE/src/.go/src/k8s.io/kubernetes"
    tar -xf "$orig" -C "$CACHE/src/.go/src/k8s.io/kubernetes" --strip-components=1
fi

echo "== make WHAT=cmd/kube-apiserver (Go 1.19, vendored, offline)"
GOROOT_DEB="$CACHE/root/usr/lib/go-1.19"
export PATH="$GOROOT_DEB/bin:$CACHE/root/usr/bin:$PATH"   # rsync must be on PATH or codegen writes empty files
export LD_LIBRARY_PATH="$CACHE/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export GOROOT="$GOROOT_DEB" GOPATH="$CACHE/src/.go" GOCACHE="$CACHE/gocache" \
       GOPROXY=off CGO_ENABLED=0 KUBE_VERBOSE=1
cd "$CACHE/src/.go/src/k8s.io/kubernetes"
make WHAT=cmd/kube-apiserver
cp _output/bin/kube-apiserver "$BIN/kube-apiserver" 2>/dev/null || cp _output/local/bin/linux/amd64/kube-apiserver "$BIN/kube-apiserver"
"$BIN/kube-apiserver" --version
# Only the two binaries are needed afterwards: drop the ~2.5 GB source tree and Go build cache.
cd "$CACHE"
chmod -R u+w "$CACHE/src" 2>/dev/null || true   # Go marks module-cache files read-only
rm -rf "$CACHE/src" "$CACHE/gocache" "$CACHE/root" "$CACHE/debs" "$APT"
echo "built $BIN/kube-apiserver"
