#!/bin/bash
# offhost.sh - a second machine for the off-host backup tests: a network namespace with its own address,
# reachable from the host and from containers (routed through the host), running an S3-compatible object
# store: moto's server on the namespace's loopback, behind HAProxy terminating HTTPS with a self-signed
# certificate made here (as object stores sit behind a TLS load balancer; Werkzeug's own TLS ends
# connections without close_notify, which OpenSSL 3 clients such as pgBackRest refuse). And an SSH server
# (OpenSSH's sshd, key login only, the SFTP subsystem alone, chrooted into the state directory's sftp/, whose
# repo/ is the repository's directory). Run as root.
#
#   offhost.sh up      create the namespace and start the store and sshd; prints: endpoint=IP:PORT ca=FILE
#                      sftp=IP:22 sftp_fingerprint=SHA256HEX sftp_key=FILE (the login's private key)
#   offhost.sh cut     the machine is gone from the network (its link goes down); `heal` brings it back
#   offhost.sh heal
#   offhost.sh down    stop the store, remove the namespace, the veth and the state directory
# State: /run/sa-offhost (pid, log, certificate). The store keeps objects in memory: `down` loses them.
set -euo pipefail
NS=sa-offhost HOSTIF=sa-off0 NSIF=sa-off1 HOSTIP=10.231.50.1 IP=10.231.50.2 PORT=9443 RUN=/run/sa-offhost
PY="${OFFHOST_PYTHON:-python3}"

up() {
  mkdir -p "$RUN"
  if ! ip netns list | grep -qx "$NS\( .*\)\?"; then
    ip netns add "$NS"
    ip link add "$HOSTIF" type veth peer name "$NSIF"
    ip link set "$NSIF" netns "$NS"
    ip addr add "$HOSTIP/30" dev "$HOSTIF"
    ip link set "$HOSTIF" up
    ip netns exec "$NS" ip addr add "$IP/30" dev "$NSIF"
    ip netns exec "$NS" ip link set "$NSIF" up
    ip netns exec "$NS" ip link set lo up
    ip netns exec "$NS" ip route add default via "$HOSTIP"
  fi
  if [ ! -s "$RUN/cert.pem" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$IP" -addext "subjectAltName=IP:$IP" \
      -keyout "$RUN/key.pem" -out "$RUN/cert.pem" 2>/dev/null
  fi
  if [ ! -s "$RUN/pid" ] || ! kill -0 "$(cat "$RUN/pid")" 2>/dev/null; then
    ip netns exec "$NS" "$PY" -m moto.server -H 127.0.0.1 -p 9000 >"$RUN/log" 2>&1 &
    echo $! > "$RUN/pid"
    cat "$RUN/cert.pem" "$RUN/key.pem" > "$RUN/haproxy.pem"
    cat > "$RUN/haproxy.cfg" <<CFG
global
    maxconn 256
defaults
    mode http
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend s3
    bind $IP:$PORT ssl crt $RUN/haproxy.pem
    default_backend moto
backend moto
    server moto 127.0.0.1:9000
CFG
    ip netns exec "$NS" haproxy -D -p "$RUN/haproxy.pid" -f "$RUN/haproxy.cfg"
    for _ in $(seq 1 100); do
      if curl -sk -o /dev/null "https://$IP:$PORT/"; then break; fi
      sleep 0.1
    done
    curl -sk -o /dev/null "https://$IP:$PORT/" || { tail -n 5 "$RUN/log" >&2; echo "offhost: store did not start" >&2; exit 1; }
  fi
  sftp
  echo "endpoint=$IP:$PORT ca=$RUN/cert.pem sftp=$IP:22 sftp_fingerprint=$(fingerprint)" \
    "sftp_key=$RUN/sftp_login_key"
}

# pgBackRest's form of the host key's fingerprint: SHA-256 of the key blob, hex. Of the ECDSA key: the server
# has the three key types a stock OpenSSH install has, and libssh2 asks for ECDSA first.
fingerprint() { awk '{print $2}' "$RUN/ssh_host_ecdsa_key.pub" | base64 -d | sha256sum | cut -d' ' -f1; }

sftp() {
  if [ ! -s "$RUN/ssh_host_ed25519_key" ]; then
    for type in ecdsa ed25519 rsa; do ssh-keygen -q -t "$type" -N '' -C sa-offhost -f "$RUN/ssh_host_${type}_key"; done
    ssh-keygen -q -t ed25519 -N '' -C pgbackrest -f "$RUN/sftp_login_key"
    install -m 0600 "$RUN/sftp_login_key.pub" "$RUN/authorized_keys"
    # The chroot and each directory above it: root's, writable by nobody else (sshd's rule).
    install -d -m 0755 "$RUN/sftp" "$RUN/sftp/repo"
    cat > "$RUN/sshd_config" <<CFG
ListenAddress $IP:22
HostKey $RUN/ssh_host_ed25519_key
HostKey $RUN/ssh_host_ecdsa_key
HostKey $RUN/ssh_host_rsa_key
PidFile $RUN/sshd.pid
AuthorizedKeysFile $RUN/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers root
UsePAM no
AllowTcpForwarding no
X11Forwarding no
PermitTTY no
Subsystem sftp internal-sftp
ForceCommand internal-sftp
ChrootDirectory $RUN/sftp
CFG
  fi
  if [ ! -s "$RUN/sshd.pid" ] || ! kill -0 "$(cat "$RUN/sshd.pid")" 2>/dev/null; then
    mkdir -p /run/sshd
    ip netns exec "$NS" /usr/sbin/sshd -f "$RUN/sshd_config" -E "$RUN/sshd.log"
    for _ in $(seq 1 50); do
      if ip netns exec "$NS" bash -c "exec 3<>/dev/tcp/$IP/22" 2>/dev/null; then return 0; fi
      sleep 0.1
    done
    tail -n 5 "$RUN/sshd.log" >&2; echo "offhost: sshd did not start" >&2; exit 1
  fi
}

down() {
  for f in "$RUN/pid" "$RUN/haproxy.pid" "$RUN/sshd.pid"; do
    if [ -s "$f" ]; then kill "$(cat "$f")" 2>/dev/null || true; fi
  done
  ip link del "$HOSTIF" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$RUN"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  cut) ip link set "$HOSTIF" down ;;
  heal) ip link set "$HOSTIF" up ;;
  *) echo "usage: offhost.sh up|cut|heal|down" >&2; exit 2 ;;
esac
