#!/bin/sh
# Print the peer address of the ssh session on SSH_PORT that holds the
# tunnel's listener on TUNNEL_PORT: natpi's public address as gwpi sees it.
# Print nothing unless the tunnel is live (it carries a connection to natpi's
# sshd): a session whose far end changed address lingers until sshd's
# ClientAlive probes give up on it.
set -eu
ssh_port=$1
tunnel_port=$2
listeners=$(ss -Htlnp "sport = :$tunnel_port" | grep -o 'pid=[0-9]*,' | sort -u || true)
[ -n "$listeners" ] || exit 0
[ -n "$(ssh-keyscan -T 5 -p "$tunnel_port" localhost 2>/dev/null)" ] || exit 0
ss -Htnp state established "( sport = :$ssh_port )" | while read -r _ _ _ peer users; do
    for pid in $listeners; do
        case "$users" in
            *"$pid"*) echo "$peer" | sed -e 's/:[0-9]*$//' -e 's/^\[//' -e 's/\]$//' -e 's/^::ffff://' ;;
        esac
    done
done | sort -u
