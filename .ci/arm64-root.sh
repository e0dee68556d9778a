#!/usr/bin/env bash
# Prepare an emulated aarch64 Python for tests/test_arm64_emulated.py: a Debian arm64 root (python3 from
# Debian's arm64 packages) run by qemu-user with -L, no chroot and no binfmt registration, plus the manylinux
# aarch64 wheels of onnxruntime and numpy at the versions uv.lock pins, installed from the host so that pip
# never runs under emulation. Idempotent: the result is cached outside the repo and a complete cache returns
# at once; everything is built in a temporary folder and moved into place, so a failure leaves nothing half-made.
#
#   bash .ci/arm64-root.sh && EDGEKD_ARM64=1 .venv/bin/pytest tests/test_arm64_emulated.py
#
# Environment: EDGEKD_ARM64_CACHE (default ~/.cache/edgekd/arm64), EDGEKD_ARM64_SUITE (bookworm: Python 3.11),
# EDGEKD_ARM64_MIRROR (default: the Debian mirror apt uses here), EDGEKD_ARM64_CPU (qemu CPU model, default
# cortex-a76, the Raspberry Pi 5 core), EDGEKD_ARM64_HOST_PYTHON (the host Python whose pip fetches the wheels).
# Missing host tools (qemu-user-static, debootstrap) are installed with apt-get when run as root.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${EDGEKD_ARM64_CACHE:-$HOME/.cache/edgekd/arm64}
SUITE=${EDGEKD_ARM64_SUITE:-bookworm}
CPU=${EDGEKD_ARM64_CPU:-cortex-a76}
HOST_PY=${EDGEKD_ARM64_HOST_PYTHON:-python3}
LAYOUT=1 # bump when the way the root or the site is built changes

die() { echo "arm64-root: $*" >&2; exit 1; }
log() { echo "arm64-root: $*" >&2; }

ensure_tools() { # ensure_tools TOOL=PACKAGE...
    local need=() pair
    for pair in "$@"; do command -v "${pair%%=*}" >/dev/null || need+=("${pair#*=}"); done
    ((${#need[@]})) || return 0
    [ "$(id -u)" = 0 ] || die "missing ${need[*]}; install them (apt-get install ${need[*]}) or run this script as root"
    log "installing ${need[*]} with apt-get"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
}

apt_mirror() { # the Debian mirror apt already uses for $SUITE, else the official redirector
    local uri=""
    if command -v apt-get >/dev/null; then
        uri=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(ORIGIN)' 2>/dev/null |
            awk -v s="$SUITE" '$2 == s && $3 == "Debian" {print $1; exit}')
    fi
    echo "${uri:-http://deb.debian.org/debian/}"
}

lock_versions() { # "onnxruntime numpy" as pinned in uv.lock, so both sides of the check run the same releases
    "$HOST_PY" - "$REPO/uv.lock" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    pins = {p["name"]: p["version"] for p in tomllib.load(f)["package"]}
missing = [n for n in ("onnxruntime", "numpy") if n not in pins]
if missing:
    sys.exit(f"arm64-root: uv.lock pins no {', '.join(missing)}")
print(pins["onnxruntime"], pins["numpy"])
EOF
}

write_cpuinfo() { # qemu 7 does not emulate /proc/cpuinfo for aarch64, and onnxruntime's cpuinfo crashes on the
    # host's x86 one; qemu -L serves $ROOT/proc/cpuinfo instead: one $CPU entry per CPU the host's /sys lists.
    local root=$1 n tmp
    n=$("$HOST_PY" -c '
import sys
text = open("/sys/devices/system/cpu/possible").read().strip()
print(sum(int(b) - int(a) + 1 if "-" in r else 1 for r in text.split(",") for a, _, b in [r.partition("-")]))')
    local variant part revision
    case "$CPU" in
        cortex-a76) variant=0x4 part=0xd0b revision=1 ;;
        cortex-a72) variant=0x0 part=0xd08 revision=3 ;;
        cortex-a53) variant=0x0 part=0xd03 revision=4 ;;
        neoverse-n1) variant=0x3 part=0xd0c revision=1 ;;
        *) die "EDGEKD_ARM64_CPU=$CPU: use cortex-a76, cortex-a72, cortex-a53 or neoverse-n1" ;;
    esac
    mkdir -p "$root/proc"
    tmp=$(mktemp "$root/proc/.cpuinfo.XXXXXX")
    for ((i = 0; i < n; i++)); do
        printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' \
            "$i" "$variant" "$part" "$revision"
    done >"$tmp"
    chmod 644 "$tmp"
    mv -f "$tmp" "$root/proc/cpuinfo"
}

build_root() { # a minimal Debian arm64 file tree holding python3: debootstrap's first stage downloads and
    # verifies the packages; unpacking the rest with dpkg-deb replaces the second stage, which would need binfmt.
    local dest=$1 mirror tmp
    mirror=$(apt_mirror)
    tmp=$(mktemp -d "$CACHE/root.tmp.XXXXXX")
    chmod 755 "$tmp"
    log "debootstrap $SUITE arm64 from $mirror into $tmp"
    if ! debootstrap --foreign --arch=arm64 --variant=minbase --include=python3,libstdc++6 \
        "$SUITE" "$tmp" "$mirror" >"$CACHE/debootstrap.log" 2>&1; then
        rm -rf "$tmp"
        die "debootstrap failed; see $CACHE/debootstrap.log"
    fi
    local deb
    for deb in "$tmp"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$tmp"; done
    rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp/debootstrap" "$tmp"/usr/share/{doc,man,info,locale}
    [ -x "$tmp/usr/bin/python3" ] || { rm -rf "$tmp"; die "the $SUITE arm64 root has no usr/bin/python3"; }
    echo "$SUITE $mirror" >"$tmp/.edgekd-root"
    rm -rf "$dest"
    mv "$tmp" "$dest"
}

install_site() { # install_site DEST PYVER: the aarch64 wheels, no dependencies beyond numpy (all the runner imports)
    local dest=$1 pyver=$2 tmp
    tmp=$(mktemp -d "$CACHE/site.tmp.XXXXXX")
    chmod 755 "$tmp"
    log "pip: onnxruntime==$ORT_V numpy==$NUMPY_V for cp${pyver/./} manylinux aarch64"
    if ! "$HOST_PY" -m pip install --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux2014_aarch64 \
        --implementation cp --python-version "$pyver" --abi "cp${pyver/./}" \
        --target "$tmp" "onnxruntime==$ORT_V" "numpy==$NUMPY_V" >"$CACHE/pip.log" 2>&1; then
        rm -rf "$tmp"
        die "pip could not fetch the aarch64 wheels; see $CACHE/pip.log"
    fi
    rm -rf "$dest"
    mv "$tmp" "$dest"
}

main() {
    local start=$SECONDS
    mkdir -p "$CACHE"
    CACHE=$(cd "$CACHE" && pwd)
    exec 9>"$CACHE/.lock"
    flock 9
    # Under the lock, any temporary folder is a leftover of a run that was killed: remove it now and on exit.
    trap 'rm -rf "$CACHE"/*.tmp.* "$CACHE/python.tmp" "$CACHE/ready.json.tmp"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    rm -rf "$CACHE"/*.tmp.*

    read -r ORT_V NUMPY_V < <(lock_versions)
    [ -n "${NUMPY_V:-}" ] || die "could not read the onnxruntime and numpy pins from $REPO/uv.lock"
    local root=$CACHE/root key
    key="layout=$LAYOUT suite=$SUITE cpu=$CPU onnxruntime=$ORT_V numpy=$NUMPY_V"

    ensure_tools qemu-aarch64-static=qemu-user-static
    if [ -f "$CACHE/ready.json" ] && grep -qF "\"key\": \"$key\"" "$CACHE/ready.json" && [ -x "$CACHE/python" ]; then
        write_cpuinfo "$root"
        log "ready (cached): $CACHE"
        return 0
    fi
    rm -f "$CACHE/ready.json"

    if ! grep -qs "^$SUITE " "$root/.edgekd-root" || ! grep -qs "^layout=$LAYOUT$" "$CACHE/root.layout"; then
        ensure_tools debootstrap=debootstrap
        build_root "$root"
        echo "layout=$LAYOUT" >"$CACHE/root.layout"
    fi
    write_cpuinfo "$root"

    local pyver
    pyver=$(basename "$(readlink "$root/usr/bin/python3")")
    pyver=${pyver#python}
    [[ $pyver =~ ^3\.[0-9]+$ ]] || die "cannot tell the Python version of $root/usr/bin/python3"
    local site=$CACHE/site-cp${pyver/./}-ort$ORT_V-numpy$NUMPY_V
    if [ ! -f "$site/.complete" ]; then
        install_site "$site" "$pyver"
        touch "$site/.complete"
        find "$CACHE" -maxdepth 1 -name 'site-cp*' ! -path "$site" -exec rm -rf {} +
    fi

    local qemu qemu_version
    qemu=$(command -v qemu-aarch64-static)
    qemu_version=$("$qemu" --version | awk 'NR == 1 {print $3}')
    {
        echo '#!/bin/sh'
        echo "# Emulated aarch64 Python $pyver ($SUITE arm64) with onnxruntime $ORT_V and numpy $NUMPY_V; from .ci/arm64-root.sh"
        printf 'exec env -u PYTHONHOME -u PYTHONSTARTUP -u VIRTUAL_ENV PYTHONPATH=%q PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1 ' "$site"
        printf 'EDGEKD_EMULATED=%q %q -cpu %q -L %q %q "$@"\n' "qemu-user $qemu_version $CPU" "$qemu" "$CPU" "$root" "$root/usr/bin/python$pyver"
    } >"$CACHE/python.tmp"
    chmod 755 "$CACHE/python.tmp"
    mv -f "$CACHE/python.tmp" "$CACHE/python"

    local probe
    probe=$("$CACHE/python" -c 'import platform, numpy, onnxruntime; print(platform.machine(), platform.python_version(), onnxruntime.__version__, numpy.__version__)') ||
        die "the emulated Python could not import onnxruntime; run $CACHE/python -c 'import onnxruntime' to see why"
    [ "${probe%% *}" = aarch64 ] || die "the emulated Python reports machine ${probe%% *}, not aarch64"
    log "emulated: $probe"

    local root_mb site_mb
    root_mb=$(du -sm "$root" | cut -f1)
    site_mb=$(du -sm "$site" | cut -f1)
    "$HOST_PY" - "$CACHE/ready.json" <<EOF
import json, sys
machine, python, ort, numpy = "$probe".split()
info = {"key": "$key", "suite": "$SUITE", "mirror": "$(cut -d' ' -f2 "$root/.edgekd-root")", "cpu": "$CPU", "qemu": "$qemu_version",
        "machine": machine, "python": python, "onnxruntime": ort, "numpy": numpy,
        "launcher": "$CACHE/python", "root": "$root", "site": "$site",
        "root_mb": $root_mb, "site_mb": $site_mb, "build_seconds": $((SECONDS - start))}
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump(info, f, indent=2)
EOF
    mv -f "$CACHE/ready.json.tmp" "$CACHE/ready.json"
    log "ready in $((SECONDS - start)) s: $CACHE (root ${root_mb} MB, wheels ${site_mb} MB)"
}

main "$@"
