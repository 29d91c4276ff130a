getent group sparkcr-edge >/dev/null || groupadd -r sparkcr-edge
getent passwd sparkcr-edge >/dev/null || useradd -r -g sparkcr-edge -d /var/lib/sparkcr-edge -s /sbin/nologin -c "sparkcr-edge registry cache" sparkcr-edge
exit 0
