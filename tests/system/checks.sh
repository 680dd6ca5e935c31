# shellcheck shell=bash
# What the system tests share (sourced). The reporting: one "ok NAME" or "FAILED NAME" line
# per check, and "N passed, M failed" as the last line, with a non-zero exit on any failure.

passed=0
failed=0
pass() { passed=$((passed + 1)); printf 'ok     %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf 'FAILED %s\n' "$1"; }
# check NAME COMMAND...: passes when COMMAND succeeds.
check() {
    local name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}
finish() {
    printf '%s passed, %s failed\n' "$passed" "$failed"
    ((failed == 0))
    exit
}

# --- shared by the system tests that build a Debian tree (vm_test.sh, fresh_root_test.sh) -----

# Both test on Debian 12.
readonly DEBIAN_SUITE=bookworm
STARTED=$SECONDS
# phase TEXT: a heading with the seconds since the test started.
phase() { printf '== %s (at %d s)\n' "$*" $((SECONDS - STARTED)); }
# run_logged LOG COMMAND...: runs it with its output in LOG, shown only when it fails.
run_logged() {
    local log=$1
    shift
    local status=0
    "$@" >"$log" 2>&1 || status=$?
    ((status == 0)) || tail -n 40 "$log"
    return "$status"
}

# The ones among the Debian packages "$@" that are not installed, one a line.
missing_packages() {
    local package
    for package in "$@"; do
        [[ $(dpkg-query -W -f='${Status}' "$package" 2>/dev/null) == "install ok installed" ]] ||
            printf '%s\n' "$package"
    done
}
# install_host_packages LOG PACKAGE...: installs the missing ones on this host, a check.
install_host_packages() {
    local log=$1
    shift
    local -a missing
    mapfile -t missing < <(missing_packages "$@")
    ((${#missing[@]} > 0)) || return 0
    echo "installing ${missing[*]}"
    apt-get update -qq >/dev/null 2>&1
    check "installed the host packages ${missing[*]}" run_logged "$log" \
        env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}"
}

# The Debian mirror this host's apt uses: the first "deb" source of $DEBIAN_SUITE in
# /etc/apt/sources.list or /etc/apt/sources.list.d (one-line or deb822 format).
debian_mirror() {
    local file
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $file ]] || continue
        awk -v suite="$DEBIAN_SUITE" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }' "$file"
    done
    for file in /etc/apt/sources.list.d/*.sources; do
        [[ -f $file ]] || continue
        awk -v suite="$DEBIAN_SUITE" '
            BEGIN { RS = ""; FS = "\n" }
            {
                types = ""; uris = ""; suites = ""; enabled = "yes"
                for (i = 1; i <= NF; i++) {
                    line = $i
                    if (line ~ /^[ \t]*#/) continue
                    value = substr(line, index(line, ":") + 1)
                    if (line ~ /^Types:/) types = " " value " "
                    else if (line ~ /^URIs:/) uris = value
                    else if (line ~ /^Suites:/) suites = " " value " "
                    else if (line ~ /^Enabled:/) enabled = value
                }
                gsub(/[ \t]+/, " ", types); gsub(/[ \t]+/, " ", suites); gsub(/[ \t]/, "", enabled)
                if (enabled != "no" && types ~ / deb / && index(suites, " " suite " ")) {
                    n = split(uris, list, /[ \t]+/)
                    for (j = 1; j <= n; j++) if (list[j] != "") { print list[j]; exit }
                }
            }' "$file"
    done
}

# The CA bundle this host trusts (a proxy's CA, say), for pip inside a chroot.
host_ca_bundle() {
    local file
    for file in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
        if [[ -n $file && -r $file ]]; then
            printf '%s\n' "$file"
            return
        fi
    done
}
# NAME=VALUE lines of this host's settings for reaching the package registries, to hand on.
registry_environment() {
    local name
    for name in PIP_INDEX_URL PIP_DEFAULT_TIMEOUT http_proxy https_proxy no_proxy \
        HTTP_PROXY HTTPS_PROXY NO_PROXY; do
        [[ -n ${!name:-} ]] && printf '%s=%s\n' "$name" "${!name}"
    done
    return 0
}

# --- shared by the tests that chroot into a throwaway root (fresh_root_test.sh, arm64_test.sh) --

# minutes SECONDS: "N s (NmSSs)".
minutes() { printf '%d s (%dm%02ds)' "$1" $(($1 / 60)) $(($1 % 60)); }
# end_processes_in_root ROOT: kills whatever still runs inside ROOT (started by this run).
end_processes_in_root() {
    local link pid
    for link in /proc/[0-9]*/root; do
        [[ $(readlink "$link" 2>/dev/null) == "$1" ]] || continue
        pid=${link#/proc/}
        pid=${pid%/root}
        kill -KILL "$pid" 2>/dev/null
    done
    return 0
}
# mount_system_filesystems ROOT: /proc, /sys, /dev (the host's, bound as a slave so that
# nothing mounted below it shows on the host), /dev/pts and /dev/shm in ROOT.
mount_system_filesystems() {
    mount -t proc proc "$1/proc" &&
        mount -t sysfs sysfs "$1/sys" &&
        mount --bind /dev "$1/dev" && mount --make-rslave "$1/dev" &&
        mount --bind /dev/pts "$1/dev/pts" &&
        mount -t tmpfs -o nosuid,nodev,mode=1777 shm "$1/dev/shm"
}

# Never delete through a mount: a tree left with /proc mounted by a killed run is unmounted
# first, and rm stays on the tree's own file system.
remove_tree() {
    local tree=$1
    [[ -d $tree ]] || return 0
    findmnt -rn -o TARGET | grep -F "$tree/" | sort -r | while IFS= read -r target; do
        umount -l "$target"
    done
    rm -rf --one-file-system "$tree"
}

# lock_cache CACHE: waits (at most 30 min) until no other run uses CACHE; the lock is on fd 9,
# held until `flock -u 9` or the end of the script.
lock_cache() {
    mkdir -p "$1"
    exec 9>"$1/.lock"
    flock -w 1800 9
}
# cached_debian_tree CACHE RECIPE MIRROR FINISH PACKAGE...: makes sure CACHE/rootfs is a
# $DEBIAN_SUITE tree from `debootstrap --variant=minbase --include=PACKAGE,...` from MIRROR
# (empty: the mirror this host's apt uses), with `FINISH TREE` run on it before it is kept.
# It is built again only when RECIPE (bump it when FINISH changes), the suite or the packages
# change. Hold lock_cache CACHE. Reports a failure with fail and returns non-zero. Sets
# debootstrap_seconds to how long debootstrap took (empty when the cached tree was used).
# With DEBIAN_ARCH set after sourcing this (arm64, say), the tree is of that architecture.
debootstrap_seconds=""
DEBIAN_ARCH=""
cached_debian_tree() {
    local cache=$1 recipe=$2 mirror=$3 finish_tree=$4
    shift 4
    local tree=$cache/rootfs key
    key=$(printf '%s\n' "$recipe" "$DEBIAN_SUITE" ${DEBIAN_ARCH:+"$DEBIAN_ARCH"} "$@" |
        sha256sum | cut -c1-16)
    if [[ -d $tree && -f $cache/rootfs.key && $(<"$cache/rootfs.key") == "$key" ]]; then
        phase "Debian tree: cached in $cache"
        return 0
    fi
    phase "Debian tree: debootstrap (not cached yet)"
    rm -f "$cache/rootfs.key"
    remove_tree "$tree"
    remove_tree "$tree.new"
    [[ -n $mirror ]] || mirror=$(debian_mirror | head -n 1)
    if [[ -z $mirror ]]; then
        fail "found a Debian mirror for $DEBIAN_SUITE in /etc/apt/sources.list{,.d}"
        return 1
    fi
    echo "mirror: $mirror"
    local packages started=$SECONDS
    packages=$(IFS=,; echo "$*")
    if ! run_logged "$cache/debootstrap.log" debootstrap --variant=minbase \
        ${DEBIAN_ARCH:+--arch="$DEBIAN_ARCH"} \
        --include="$packages" "$DEBIAN_SUITE" "$tree.new" "$mirror"; then
        fail "debootstrap of the Debian tree"
        return 1
    fi
    debootstrap_seconds=$((SECONDS - started))
    echo "debootstrap took $debootstrap_seconds s"
    "$finish_tree" "$tree.new" || { fail "finished the new Debian tree ($finish_tree)"; return 1; }
    mv "$tree.new" "$tree"
    printf '%s\n' "$key" >"$cache/rootfs.key"
}
