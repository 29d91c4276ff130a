install -d -o sparkcr-edge -g sparkcr-edge -m 0750 /var/lib/sparkcr-edge
# The config may hold secrets: readable by root and the service's group only (left alone
# when the admin gave it another owner or group).
if [ -f /etc/sparkcr-edge/config.toml ] && [ "$(stat -c %U:%G /etc/sparkcr-edge/config.toml)" = "root:root" ]; then
    chgrp sparkcr-edge /etc/sparkcr-edge/config.toml
    chmod 0640 /etc/sparkcr-edge/config.toml
fi
if [ ! -e /etc/sparkcr-edge/tls/cert.pem ]; then
    /usr/bin/sparkcr-edge tls self-signed --config /etc/sparkcr-edge/config.toml --out /etc/sparkcr-edge/tls >/dev/null 2>&1 || true
fi
[ -e /etc/sparkcr-edge/tls/key.pem ] && chown root:sparkcr-edge /etc/sparkcr-edge/tls/key.pem && chmod 0640 /etc/sparkcr-edge/tls/key.pem
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
    systemctl enable sparkcr-edge.service >/dev/null 2>&1 || true
fi
exit 0
