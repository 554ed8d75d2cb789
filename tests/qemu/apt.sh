# tests/qemu/apt.sh - sourced by fetch.sh and source.sh: an apt configuration
# of our own (the system's apt and its sources are not touched).
#
#   private_apt DIR TYPE SUITE   TYPE deb or deb-src; sets the array apt_opts
#                                for apt-get/apt-cache, lists in DIR, updated
#                                when older than a day
# Needs log and die from the caller.

private_apt() {
    local dir=$1 type=$2 suite=$3 mirror kind
    mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/etc"
    # The host's Debian mirror, with the suite asked for.
    mirror=$(apt-get indextargets --format '$(REPO_URI)' 'Identifier: Packages' 'Origin: Debian' 2>/dev/null |
        grep -v security | head -n 1)
    [ -n "$mirror" ] || mirror=$(apt-get indextargets --format '$(REPO_URI)' 'Identifier: Packages' | grep -v security | head -n 1)
    [ -n "$mirror" ] || die "no Debian package source configured (apt-get update first)"
    echo "$type $mirror $suite main" > "$dir/etc/sources.list"
    apt_opts=(-o "Dir::Etc::sourcelist=$dir/etc/sources.list" -o Dir::Etc::sourceparts=/dev/null
              -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache" -o Debug::NoLocking=1
              -o APT::Sandbox::User=root -q)
    kind=Packages
    [ "$type" = deb-src ] && kind=Sources
    # Lists at most a day old are good enough.
    if [ -z "$(find "$dir/lists" -maxdepth 1 -name "*$kind*" -mmin -1440 2>/dev/null | head -n 1)" ]; then
        log "apt-get update ($type $suite)"
        apt-get "${apt_opts[@]}" update >/dev/null 2>"$dir/update.err" ||
            { cat "$dir/update.err" >&2; die "apt-get update failed"; }
    fi
}
