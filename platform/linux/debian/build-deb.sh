#!/usr/bin/env bash
# Builds the Debian package of reseedfs with cargo-deb: target/debian/reseedfs_<version>_<arch>.deb
#
#   platform/linux/debian/build-deb.sh [--no-build] [--profile PROFILE] [--output DIR] [--fast]
#
# 1. builds the binary (`cargo build --release`), unless --no-build (then the binary that
#    `cargo test --release` or an earlier build left is packaged);
# 2. has that binary write its man pages and shell completions (`reseedfs generate`), so
#    they are made from the very clap definitions that are packaged;
# 3. runs `cargo deb --no-build --strip` ([package.metadata.deb] in Cargo.toml lists the
#    files; the release profile keeps line tables for backtraces, the package does not).
#    --fast compresses less (the tests use it: a few seconds instead of half a minute).
#
# Needs cargo-deb: cargo install cargo-deb --version 3.8.0 --locked
# Prints the path of the package on its last line.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../../.."

build=1
profile=release
output=()
fast=()
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) build=0 ;;
        --profile) profile="$2"; shift ;;
        --output) output=(--output "$2"); shift ;;
        --fast) fast=(--fast) ;;
        -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "build-deb.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if ! cargo deb --version >/dev/null 2>&1; then
    echo "build-deb.sh: cargo-deb is missing: cargo install cargo-deb --version 3.8.0 --locked" >&2
    exit 1
fi

target_dir=$(cargo metadata --format-version 1 --no-deps --offline 2>/dev/null \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$target_dir" ] || target_dir="$PWD/target"
case "$profile" in
    dev|test) profile_dir=debug ;;
    bench) profile_dir=release ;;
    *) profile_dir="$profile" ;;
esac
bin="$target_dir/$profile_dir/reseedfs"

if [ "$build" = 1 ]; then
    cargo build --locked --profile "$profile" --bin reseedfs
fi
if [ ! -x "$bin" ]; then
    echo "build-deb.sh: no binary at $bin: build it (cargo build --profile $profile), or drop --no-build" >&2
    exit 1
fi

# Generated into the profile's directory: Cargo.toml names them target/release/deb-assets/...,
# a prefix cargo-deb maps to the profile's real target directory.
assets="$target_dir/$profile_dir/deb-assets"
rm -rf "$assets"
"$bin" generate man "$assets/man" >/dev/null
"$bin" generate completions "$assets/completions" >/dev/null
# Debian's man pages are gzipped (-n: no name or time inside, the same bytes every build).
gzip -9n "$assets"/man/*

cargo deb --no-build --strip --profile "$profile" "${output[@]}" "${fast[@]}" | tail -n 1
