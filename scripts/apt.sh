# Sourced by the ensure-*.sh scripts: run a command as root (directly, or through sudo), and
# install Debian packages. Messages name the calling script.
as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "$(basename "$0"): need root (or sudo) to run: $*" >&2; return 1; fi
}
apt_install() {
    echo "$(basename "$0"): installing $* from Debian's packages" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}
