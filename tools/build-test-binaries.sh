#!/usr/bin/env bash
# Build the binaries the Kubernetes-side tests need, from pinned Go modules:
#
#   kube-apiserver  k8s.io/kubernetes/cmd/kube-apiserver   (tools/k8s/go.mod)
#   kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl
#                   k8s.io/kubernetes/cmd/<name>           (tools/k8s/go.mod)
#   etcd            go.etcd.io/etcd/server/v3              (tools/etcd/go.mod)
#   helm            helm.sh/helm/v3/cmd/helm               (tools/helm/go.mod)
#   livekit-server  github.com/livekit/livekit-server/cmd/server (tools/livekit/go.mod)
#   coredns         github.com/coredns/coredns             (tools/coredns/go.mod)
#   tilt            github.com/tilt-dev/tilt/cmd/tilt      (tools/tilt/go.mod; see build_tilt)
#   registry        github.com/distribution/distribution/v3/cmd/registry (tools/registry/go.mod)
#   promtool        github.com/prometheus/prometheus/cmd/promtool (tools/promtool/go.mod)
#   pause           the Pod sandbox process                (tools/pause, our own source)
#
# Each is built once per version into a cache outside the checkout:
#
#   ${DUPLEX_CACHE:-$HOME/.cache/duplex}/bin/<name>-<version>
#
# The version (the cache key) is read from the require line of the tool's go.mod, so
# bumping a pin there builds a new binary next to the old one; for pause, whose source is
# here, it is a hash of that source. Go's module and build
# caches live under the same directory (gomodcache/, gocache/), so a second run, or a
# run after `go mod download` in tools/*, needs no network.
#
# Usage: tools/build-test-binaries.sh [--check] [NAME ...]   (the names above)
#   no names   all of them
#   --check    build nothing; print what is cached, exit 1 if any is missing
# Prints one line per binary on stdout: <name>=<absolute path>. Progress goes to stderr.
#
# Environment:
#   DUPLEX_CACHE        cache root (default $HOME/.cache/duplex)
#   DUPLEX_BUILD_JOBS   go build -p N (default: go's own, the number of CPUs)
#
# Needs Go >= 1.22 on PATH; no cgo (CGO_ENABLED=0), no C compiler, except for tilt: its
# Tiltfile language server parses with tree-sitter (cgo: gcc), and its web UI is built with
# Node.js >= 18 (the yarn release in Tilt's source fetches the UI's packages from npm).
# The Kubernetes binaries are the big ones: minutes each and a few GiB of memory on 2 cores
# (they share most packages, so the first is the slowest).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${DUPLEX_CACHE:-$HOME/.cache/duplex}"
bindir="$cache/bin"

log() { printf 'build-test-binaries: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

check_only=0
names=()
for arg in "$@"; do
    case "$arg" in
        --check) check_only=1 ;;
        -h|--help) sed -n '2,35p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option '$arg' (expected --check)" ;;
        *) names+=("$arg") ;;
    esac
done
all_names=(kube-apiserver etcd helm livekit-server kube-controller-manager kube-scheduler
    kubelet kube-proxy kubectl coredns tilt registry promtool pause)
if [ "${#names[@]}" -eq 0 ]; then
    names=("${all_names[@]}")
fi
for name in "${names[@]}"; do
    [[ " ${all_names[*]} " == *" $name "* ]] || die "unknown binary '$name' (expected one of: ${all_names[*]})"
done

# name -> (module dir under tools/, module whose version is the cache key, main package)
# A module of ours (pause) has no required version: the empty module name says so.
tool_dir() {
    case "$1" in
        kube-*|kubelet|kubectl) echo "$here/k8s" ;;
        etcd) echo "$here/etcd" ;;
        helm) echo "$here/helm" ;;
        livekit-server) echo "$here/livekit" ;;
        coredns) echo "$here/coredns" ;;
        tilt) echo "$here/tilt" ;;
        registry) echo "$here/registry" ;;
        promtool) echo "$here/promtool" ;;
        pause) echo "$here/pause" ;;
    esac
}
tool_module() {
    case "$1" in
        kube-*|kubelet|kubectl) echo "k8s.io/kubernetes" ;;
        etcd) echo "go.etcd.io/etcd/server/v3" ;;
        helm) echo "helm.sh/helm/v3" ;;
        livekit-server) echo "github.com/livekit/livekit-server" ;;
        coredns) echo "github.com/coredns/coredns" ;;
        tilt) echo "github.com/tilt-dev/tilt" ;;
        registry) echo "github.com/distribution/distribution/v3" ;;
        promtool) echo "github.com/prometheus/prometheus" ;;
        pause) echo "" ;;
    esac
}
tool_package() {
    case "$1" in
        kube-*|kubelet|kubectl) echo "k8s.io/kubernetes/cmd/$1" ;;
        etcd) echo "go.etcd.io/etcd/server/v3" ;;
        helm) echo "helm.sh/helm/v3/cmd/helm" ;;
        livekit-server) echo "github.com/livekit/livekit-server/cmd/server" ;;
        coredns) echo "github.com/coredns/coredns" ;;
        tilt) echo "github.com/tilt-dev/tilt/cmd/tilt" ;;
        registry) echo "github.com/distribution/distribution/v3/cmd/registry" ;;
        promtool) echo "github.com/prometheus/prometheus/cmd/promtool" ;;
        pause) echo "." ;;
    esac
}

# The version MODULE is required at in GOMOD (either `require M vX` or a line of a
# require block). Read from the file, so it needs neither go nor the network.
required_version() {
    local gomod="$1" module="$2"
    awk -v m="$module" '
        /^require[ \t]*\(/ { inblock = 1; next }
        inblock && /^\)/   { inblock = 0; next }
        inblock && $1 == m { print $2; exit }
        $1 == "require" && $2 == m { print $3; exit }
    ' "$gomod"
}

ldflags_for() {
    local name="$1" version="$2" gomod="$3"
    case "$name" in
        kube-*|kubelet|kubectl)
            # What kube's own build stamps (hack/lib/version.sh), so /version reports
            # the real release instead of v0.0.0-master.
            local major minor flags=""
            major="${version#v}"; major="${major%%.*}"
            minor="${version#v*.}"; minor="${minor%%.*}"
            local pkg
            for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
                flags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major"
                flags+=" -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
            done
            echo "-s -w$flags"
            ;;
        etcd|livekit-server|coredns|registry|promtool|pause)
            echo "-s -w"
            ;;
        tilt)
            # Tilt's release build stamps its version (goreleaser: main.version).
            echo "-s -w -X main.version=${version#v}"
            ;;
        helm)
            # helm's Makefile stamps its version and the Kubernetes version it was built
            # against; without the latter `helm template` assumes Kubernetes v1.20.
            local kver kmajor kminor
            kver="$(required_version "$gomod" k8s.io/client-go)"
            kver="${kver:-v0.31.0}"
            kmajor=1
            kminor="${kver#v0.}"; kminor="${kminor%%.*}"
            echo "-s -w -X helm.sh/helm/v3/internal/version.version=$version" \
                "-X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
                "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$kmajor" \
                "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$kminor" \
                "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$kmajor" \
                "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$kminor"
            ;;
    esac
}

# Tilt embeds its web UI, which its module ships as sources only. So it is built inside a copy
# of its own module (its go.mod, go.sum and replace directives apply), after building the UI
# into pkg/assets/build as its Makefile does. Module zips carry no vendored code: the
# dependencies come from the module proxy, checked against Tilt's go.sum.
build_tilt() {
    local dir="$1" version="$2" ldflags="$3" out="$4" src
    command -v node >/dev/null 2>&1 || die "Node.js >= 18 is needed to build Tilt's web UI"
    src="$(cd "$dir" && go mod download -json "github.com/tilt-dev/tilt@$version" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    [ -d "$src" ] || die "go mod download of github.com/tilt-dev/tilt@$version failed"
    local work="$cache/build/tilt-$version"
    rm -rf "$work"
    mkdir -p "$(dirname "$work")"
    cp -r "$src" "$work"
    chmod -R u+w "$work"
    rm -rf "$work/vendor"
    local yarn=(node "$work/web/.yarn/releases/"yarn-*.cjs)
    log "building Tilt's web UI (yarn, from the npm registry)"
    if ! (cd "$work/web" && YARN_ENABLE_TELEMETRY=0 "${yarn[@]}" install --immutable \
            && CI=true "${yarn[@]}" build) >"$work.web.log" 2>&1; then
        tail -n 30 "$work.web.log" >&2
        die "building Tilt's web UI failed (log: $work.web.log)"
    fi
    cp -r "$work/web/build/." "$work/pkg/assets/build/"
    if ! (cd "$work" && CGO_ENABLED=1 go build -trimpath \
            ${jobs_flag[@]+"${jobs_flag[@]}"} -ldflags "$ldflags" -o "$out" ./cmd/tilt); then
        rm -f "$out"
        die "go build of tilt $version failed (source copy $work)"
    fi
    rm -rf "$work" "$work.web.log"
}

# Resolve every requested binary's path first (needs no go).
declare -A paths=()
missing=()
for name in "${names[@]}"; do
    dir="$(tool_dir "$name")"
    gomod="$dir/go.mod"
    [ -f "$gomod" ] || die "$gomod not found"
    module="$(tool_module "$name")"
    if [ -n "$module" ]; then
        version="$(required_version "$gomod" "$module")"
        [ -n "$version" ] || die "no version of $module required in $gomod"
    else
        version="src-$(cd "$dir" && cat go.mod ./*.go | sha256sum | cut -c1-12)"
    fi
    paths[$name]="$bindir/$name-$version"
    if [ ! -x "${paths[$name]}" ]; then
        missing+=("$name")
    fi
done

if [ "$check_only" -eq 1 ]; then
    for name in "${names[@]}"; do
        echo "$name=${paths[$name]}"
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "not built yet: ${missing[*]} (run tools/build-test-binaries.sh)"
        exit 1
    fi
    exit 0
fi

if [ "${#missing[@]}" -gt 0 ]; then
    command -v go >/dev/null 2>&1 || die "'go' is not on PATH; Go >= 1.22 is needed to build ${missing[*]}"
    gover="$(go env GOVERSION 2>/dev/null || true)"    # e.g. go1.22.7
    gomajor="${gover#go}"; gomajor="${gomajor%%.*}"
    gominor="${gover#go*.}"; gominor="${gominor%%[!0-9]*}"
    if [[ "$gomajor" =~ ^[0-9]+$ && "$gominor" =~ ^[0-9]+$ ]]; then
        if [ "$gomajor" -lt 1 ] || { [ "$gomajor" -eq 1 ] && [ "$gominor" -lt 22 ]; }; then
            die "Go >= 1.22 is needed, found $gover at $(command -v go)"
        fi
    else
        log "warning: cannot tell the Go version ('${gover:-unknown}'); trying anyway"
    fi

    mkdir -p "$bindir" "$cache/gomodcache" "$cache/gocache"
    export GOMODCACHE="$cache/gomodcache"
    export GOCACHE="$cache/gocache"
    export GOFLAGS="-mod=mod"
    export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
    export CGO_ENABLED=0
    unset GOOS GOARCH GOBIN

    jobs_flag=()
    if [ -n "${DUPLEX_BUILD_JOBS:-}" ]; then
        jobs_flag=(-p "$DUPLEX_BUILD_JOBS")
    fi

    # One builder at a time per cache (parallel test workers may all call this).
    lockfile="$bindir/.build.lock"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$lockfile"
        if ! flock -n 9; then
            log "another build holds $lockfile; waiting"
            flock 9
        fi
    fi

    for name in "${missing[@]}"; do
        out="${paths[$name]}"
        if [ -x "$out" ]; then    # built by whoever held the lock before us
            continue
        fi
        dir="$(tool_dir "$name")"
        version="${out##*/$name-}"
        ldflags="$(ldflags_for "$name" "$version" "$dir/go.mod")"
        tmp="$out.tmp.$$"
        log "building $name $version -> $out"
        start=$SECONDS
        if [ "$name" = tilt ]; then
            build_tilt "$dir" "$version" "$ldflags" "$tmp"
        elif ! (cd "$dir" && go build -trimpath ${jobs_flag[@]+"${jobs_flag[@]}"} -ldflags "$ldflags" \
                -o "$tmp" "$(tool_package "$name")"); then
            rm -f "$tmp"
            die "go build of $name $version failed (module $dir)"
        fi
        mv -f "$tmp" "$out"
        log "built $name in $((SECONDS - start)) s"
    done
fi

for name in "${names[@]}"; do
    echo "$name=${paths[$name]}"
done
