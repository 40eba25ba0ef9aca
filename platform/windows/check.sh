#!/usr/bin/env bash
# Type-checks and lints the Windows build on any host (CI runs it on Linux), without a
# Windows SDK, libclang or a linker: `cargo check` and `cargo clippy -D warnings` for the
# Windows targets, with the `winfsp-docsrs` feature, which gives winfsp-sys its
# pre-generated bindings (that feature uses `doc_cfg`, hence RUSTC_BOOTSTRAP=1; a real
# Windows build does not use it). Installs the rustup targets when they are missing.
#
#   platform/windows/check.sh [TARGET...]   (default: x86_64-pc-windows-msvc x86_64-pc-windows-gnu)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(x86_64-pc-windows-msvc x86_64-pc-windows-gnu)
fi

installed=$(rustup target list --installed)
for target in "${targets[@]}"; do
    if ! grep -qx "$target" <<<"$installed"; then
        echo "installing the rustup target $target"
        rustup target add "$target"
    fi
done

export RUSTC_BOOTSTRAP=1
for target in "${targets[@]}"; do
    echo "--- cargo check --target $target"
    cargo check --locked --target "$target" --features winfsp-docsrs --lib --bins
    echo "--- cargo clippy --target $target -D warnings"
    cargo clippy --locked --target "$target" --features winfsp-docsrs --lib --bins -- -D warnings
done
echo "ok: the Windows build type-checks and lints for ${targets[*]}"
