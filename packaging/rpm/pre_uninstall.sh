# $1 == 0: erase (not upgrade). The cache in /var/lib/sparkcr-edge is kept.
if [ "$1" = 0 ] && [ -d /run/systemd/system ]; then
    systemctl disable --now sparkcr-edge.service >/dev/null 2>&1 || true
fi
exit 0
