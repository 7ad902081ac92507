#!/usr/bin/env bash
# Build the Debian package of keyhole with dpkg-deb:
#   $CARGO_TARGET_DIR/debian/keyhole_<version from Cargo.toml>_<arch>.deb   (path printed last)
#
#   packaging/build-deb.sh                 release build on this machine
#   packaging/build-deb.sh --clean-room    release build inside a minimal Debian made by
#                                          debootstrap (gcc + libc6-dev and the Rust toolchain,
#                                          bind-mounted read-only; nothing else): proves that
#                                          building needs no other system package (as root)
#
# What the package holds: /usr/sbin/keyhole (debug info stripped), /etc/keyhole/ (keyhole.toml,
# the shipped endpoints, role capabilities and rules, all conffiles: dpkg never overwrites an
# administrator's change), /lib/systemd/system/keyhole.service, man pages (section 8, generated
# from the clap definitions by examples/mangen.rs), /usr/share/doc/keyhole, and maintainer
# scripts (packaging/debian/) that create the run_as accounts the shipped endpoints name.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
CLEAN_ROOM=0
if [ "${1:-}" = "--clean-room" ]; then
    CLEAN_ROOM=1
fi

VERSION="$(sed -n '/^\[package\]/,/^\[/ s/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
ARCH="$(dpkg --print-architecture)"
[ -n "$VERSION" ] || { echo "build-deb: no version in Cargo.toml" >&2; exit 1; }

# 1. The release binary.
if [ "$CLEAN_ROOM" = 1 ]; then
    [ "$(id -u)" = 0 ] || { echo "build-deb: --clean-room needs root (debootstrap, chroot, mounts)" >&2; exit 1; }
    ROOMDIR="$TARGET/clean-room"
    ROOM="$ROOMDIR/debian"
    TOOLCHAIN="$(rustc --print sysroot)"
    CARGO_HOME_DIR="${CARGO_HOME:-$HOME/.cargo}"
    if [ ! -x "$ROOM/usr/bin/gcc" ]; then
        rm -rf "$ROOM"
        mkdir -p "$ROOMDIR"
        echo "build-deb: debootstrap bookworm (minbase + gcc, libc6-dev) into $ROOM"
        debootstrap --variant=minbase --include=gcc,libc6-dev bookworm "$ROOM" http://deb.debian.org/debian >"$ROOMDIR/debootstrap.log" 2>&1 \
            || { tail -n 20 "$ROOMDIR/debootstrap.log" >&2; exit 1; }
    fi
    # Fetch every crate outside (network), build inside offline from the same registry cache.
    cargo fetch --locked >/dev/null
    mkdir -p "$ROOM/opt/rust" "$ROOM/opt/cargo-home/registry" "$ROOM/src/keyhole" "$ROOM/opt/target" "$ROOMDIR/target"
    cleanup() {
        for m in "$ROOM/opt/target" "$ROOM/src/keyhole" "$ROOM/opt/cargo-home/registry" "$ROOM/opt/rust" "$ROOM/proc"; do
            umount "$m" 2>/dev/null || true
        done
    }
    trap cleanup EXIT
    mount --bind "$TOOLCHAIN" "$ROOM/opt/rust"
    mount -o remount,bind,ro "$ROOM/opt/rust"
    mount --bind "$CARGO_HOME_DIR/registry" "$ROOM/opt/cargo-home/registry"
    mount --bind "$ROOT" "$ROOM/src/keyhole"
    mount -o remount,bind,ro "$ROOM/src/keyhole"
    mount --bind "$ROOMDIR/target" "$ROOM/opt/target"
    mount -t proc proc "$ROOM/proc"
    # What the room has: no PAM headers, no libclang, no pkg-config (the build would need them
    # if any crate used bindgen or pkg-config; tests/core/build_deps.rs checks the graph too).
    for absent in /usr/include/security/pam_appl.h /usr/bin/pkg-config /usr/bin/clang; do
        if [ -e "$ROOM$absent" ]; then
            echo "build-deb: the clean room unexpectedly has $absent" >&2
            exit 1
        fi
    done
    if compgen -G "$ROOM/usr/lib/*/libclang*" >/dev/null || compgen -G "$ROOM/usr/lib/llvm-*" >/dev/null; then
        echo "build-deb: the clean room unexpectedly has libclang" >&2
        exit 1
    fi
    echo "build-deb: cargo build --release inside the clean room"
    start=$(date +%s)
    chroot "$ROOM" /usr/bin/env -i PATH=/opt/rust/bin:/usr/bin:/bin HOME=/root \
        CARGO_HOME=/opt/cargo-home CARGO_TARGET_DIR=/opt/target \
        bash -c 'cd /src/keyhole && cargo build --release --locked --offline --bin keyhole'
    echo "build-deb: clean-room release build took $(( $(date +%s) - start )) s"
    BIN="$ROOMDIR/target/release/keyhole"
    cleanup
    trap - EXIT
else
    cargo build --release --locked --bin keyhole
    BIN="$TARGET/release/keyhole"
fi

# 2. The tree.
STAGE="$TARGET/debian/keyhole_${VERSION}_${ARCH}"
rm -rf "$STAGE"
install -d -m 0755 "$STAGE/DEBIAN" "$STAGE/usr/sbin" "$STAGE/lib/systemd/system" \
    "$STAGE/etc/keyhole/endpoints" "$STAGE/etc/keyhole/role-capabilities" \
    "$STAGE/usr/share/doc/keyhole" "$STAGE/usr/share/man/man8"
# Debug info dropped (the release profile keeps it for profiling: ~70 MB -> ~10 MB).
strip --strip-debug --strip-unneeded -o "$STAGE/usr/sbin/keyhole" "$BIN"
chmod 0755 "$STAGE/usr/sbin/keyhole"
install -m 0644 packaging/keyhole.service "$STAGE/lib/systemd/system/keyhole.service"
install -m 0644 packaging/keyhole.toml "$STAGE/etc/keyhole/keyhole.toml"
# The rules file is rewritten 0600 by `keyhole rule`; ship it that way.
install -m 0600 authorization-rules.toml "$STAGE/etc/keyhole/authorization-rules.toml"
install -m 0644 endpoints/*.toml "$STAGE/etc/keyhole/endpoints/"
install -m 0644 role-capabilities/*.toml "$STAGE/etc/keyhole/role-capabilities/"
install -m 0644 README.md SECURITY.md ARCHITECTURE.md "$STAGE/usr/share/doc/keyhole/"
printf 'keyhole %s\nLicense: MIT (see Cargo.toml)\n' "$VERSION" >"$STAGE/usr/share/doc/keyhole/copyright"
chmod 0644 "$STAGE/usr/share/doc/keyhole/copyright"
cargo run --quiet --locked --example mangen -- "$STAGE/usr/share/man/man8"
gzip -9n "$STAGE"/usr/share/man/man8/*.8
chmod 0644 "$STAGE"/usr/share/man/man8/*.8.gz

# 3. Control files.
( cd "$STAGE" && find etc -type f | sort | sed 's|^|/|' ) >"$STAGE/DEBIAN/conffiles"
ACCOUNTS="$(sed -n 's/^run_as = "\(.*\)"$/\1/p' endpoints/*.toml | grep -vx root | sort -u | tr '\n' ' ' | sed 's/ $//')"
sed "s/@RUN_AS_ACCOUNTS@/$ACCOUNTS/" packaging/debian/postinst >"$STAGE/DEBIAN/postinst"
install -m 0755 packaging/debian/prerm packaging/debian/postrm "$STAGE/DEBIAN/"
chmod 0755 "$STAGE/DEBIAN/postinst"
SIZE="$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)"
cat >"$STAGE/DEBIAN/control" <<EOF
Package: keyhole
Version: $VERSION
Architecture: $ARCH
Maintainer: keyhole maintainers <keyhole@localhost>
Installed-Size: $SIZE
Depends: libc6 (>= 2.34), libgcc-s1, libpam0g, passwd, init-system-helpers (>= 1.54)
Suggests: polkitd
Section: admin
Priority: optional
Homepage: https://localhost/keyhole
Description: Just-Enough-Administration remoting endpoint server (WinRM: WinRS, PSRP)
 keyhole lets level-1 staff and vendors connect with the WinRM clients they
 already have (PowerShell remoting, pywinrm, pypsrp, Ansible) and run exactly
 the commands their role capabilities grant: no language, no shell, every
 program as an unprivileged account, every session transcribed.
 .
 libpam0g is loaded at run time for [auth] pam_service; polkitd is needed for
 Start/Stop/Restart-Service as a run_as account (keyhole polkit --write).
EOF
( cd "$STAGE" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | sort | xargs md5sum ) >"$STAGE/DEBIAN/md5sums"

OUT="$TARGET/debian/keyhole_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$OUT" >/dev/null
echo "$OUT"
