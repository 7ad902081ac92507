#!/usr/bin/env bash
# A throwaway MIT Kerberos realm on loopback, for the tests. Nothing outside DIR is touched:
# its own krb5.conf (KRB5_CONFIG), kdc.conf (KRB5_KDC_PROFILE), database, keytab, credential
# cache and replay cache all live in DIR, and `stop` kills the KDC and removes DIR.
#
#   tests/krb/realm.sh start DIR PORT   creates realm KEYHOLE.TEST with
#       alice@KEYHOLE.TEST (password "alice-pw-1"), HTTP/, WSMAN/ and host/localhost,
#       writes DIR/keytab (the service keys, mode 0600), starts krb5kdc on 127.0.0.1:PORT,
#       and gets alice a ticket in DIR/ccache. Prints the environment to use.
#       For the refusal tests it also creates mallory@KEYHOLE.TEST ("mallory-pw-1"),
#       nobody-rule@KEYHOLE.TEST ("nobody-pw-1"), and a second realm OTHER.TEST, served by the
#       same KDC and trusted by KEYHOLE.TEST (krbtgt/KEYHOLE.TEST@OTHER.TEST), with
#       bob@OTHER.TEST ("bob-pw-1"): a principal of a realm keyhole may not list.
#   tests/krb/realm.sh stop DIR         stops the KDC and removes DIR.
#
# Needs krb5-kdc, krb5-admin-server (kadmin.local) and krb5-user (kinit): tests/run.sh installs them.
set -euo pipefail
cmd=${1:?start|stop}
dir=${2:?directory}
realm=KEYHOLE.TEST
other=OTHER.TEST

case "$cmd" in
start)
    port=${3:?port}
    mkdir -p "$dir"
    chmod 700 "$dir"
    cat >"$dir/krb5.conf" <<CONF
[libdefaults]
    default_realm = $realm
    dns_lookup_kdc = false
    dns_lookup_realm = false
    dns_canonicalize_hostname = false
    rdns = false
    udp_preference_limit = 1
[realms]
    $realm = {
        kdc = 127.0.0.1:$port
    }
    $other = {
        kdc = 127.0.0.1:$port
    }
[domain_realm]
    localhost = $realm
[capaths]
    $other = {
        $realm = .
    }
CONF
    cat >"$dir/kdc.conf" <<CONF
[kdcdefaults]
    kdc_listen = 127.0.0.1:$port
    kdc_tcp_listen = 127.0.0.1:$port
[realms]
    $realm = {
        database_name = $dir/principal
        key_stash_file = $dir/stash
        acl_file = $dir/kadm5.acl
        max_life = 1h
        supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
    }
    $other = {
        database_name = $dir/other-principal
        key_stash_file = $dir/other-stash
        acl_file = $dir/kadm5.acl
        max_life = 1h
        supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
    }
[logging]
    kdc = FILE:$dir/kdc.log
CONF
    : >"$dir/kadm5.acl"
    export KRB5_CONFIG="$dir/krb5.conf" KRB5_KDC_PROFILE="$dir/kdc.conf" KRB5RCACHEDIR="$dir"
    kdb5_util create -s -r "$realm" -P "keyhole-master-$$" >/dev/null 2>>"$dir/kadmin.log"
    kadmin.local -r "$realm" -q "addprinc -pw alice-pw-1 alice" >/dev/null 2>>"$dir/kadmin.log"
    kadmin.local -r "$realm" -q "addprinc -randkey HTTP/localhost" >/dev/null 2>>"$dir/kadmin.log"
    kadmin.local -r "$realm" -q "addprinc -randkey WSMAN/localhost" >/dev/null 2>>"$dir/kadmin.log"
    # host/ too, as a domain-joined host's keytab has it: pypsrp asks for host/<name> by default.
    kadmin.local -r "$realm" -q "addprinc -randkey host/localhost" >/dev/null 2>>"$dir/kadmin.log"
    kadmin.local -r "$realm" -q "ktadd -k $dir/keytab HTTP/localhost WSMAN/localhost host/localhost" >/dev/null 2>>"$dir/kadmin.log"
    chmod 600 "$dir/keytab"
    kadmin.local -r "$realm" -q "addprinc -pw mallory-pw-1 mallory" >/dev/null 2>>"$dir/kadmin.log"
    kadmin.local -r "$realm" -q "addprinc -pw nobody-pw-1 nobody-rule" >/dev/null 2>>"$dir/kadmin.log"
    # The second realm and the one-way trust: the same cross-realm key in both databases.
    kdb5_util create -s -r "$other" -P "keyhole-master-other-$$" >/dev/null 2>>"$dir/kadmin.log"
    kadmin.local -r "$other" -q "addprinc -pw bob-pw-1 bob" >/dev/null 2>>"$dir/kadmin.log"
    trust="keyhole-trust-$$-$RANDOM$RANDOM"
    for r in "$realm" "$other"; do
        kadmin.local -r "$r" -q "addprinc -pw $trust krbtgt/$realm@$other" >/dev/null 2>>"$dir/kadmin.log"
    done
    krb5kdc -n -r "$realm" -r "$other" -P "$dir/kdc.pid" >/dev/null 2>"$dir/kdc.err" &
    echo $! >"$dir/kdc.pid"
    for _ in $(seq 1 50); do
        if echo alice-pw-1 | KRB5CCNAME="FILE:$dir/ccache" kinit alice@"$realm" >/dev/null 2>&1; then
            echo "KRB5_CONFIG=$dir/krb5.conf"
            echo "KRB5RCACHEDIR=$dir"
            echo "KRB5CCNAME=FILE:$dir/ccache"
            echo "KEYTAB=$dir/keytab"
            exit 0
        fi
        sleep 0.1
    done
    echo "the KDC did not answer on 127.0.0.1:$port:" >&2
    cat "$dir/kdc.err" "$dir/kdc.log" >&2 || true
    exit 1
    ;;
stop)
    if [ -f "$dir/kdc.pid" ]; then
        kill "$(cat "$dir/kdc.pid")" 2>/dev/null || true
    fi
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 start DIR PORT | stop DIR" >&2
    exit 2
    ;;
esac
