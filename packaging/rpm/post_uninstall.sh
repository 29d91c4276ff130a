# $1 >= 1: an upgrade (the new package is installed): a running daemon moves to the new
# binary. $1 == 0: erase; the cache in /var/lib/sparkcr-edge is kept.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
    if [ "$1" -ge 1 ]; then
        systemctl try-restart sparkcr-edge.service >/dev/null 2>&1 || true
    fi
fi
exit 0
