"""The install phase of a layer's script: uv (or pip where uv cannot run) from the lock into the venv. Pure.

Split from scripts.py, which assembles the phases; this module owns how Python packages get installed.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imagekit.render.scripts import LayerSteps

BUILD_DEPS = ("build-essential",)


def _q(text: str) -> str:
    return shlex.quote(text)


# uv (PyPI `uv`, pinned here) installs Python packages: the same lock, hashes and no-deps rules as pip, parallel
# downloads. It is fetched with pip into the build's cache mount (or a temporary folder on a VM), never into the venv.
UV_VERSION = "0.13.9"
INSTALL_HELPERS = f"""\
UV_VERSION={UV_VERSION}
# Downloads are cached in $IMAGEKIT_CACHE (a BuildKit cache mount) when it is set, so --force, refreshes and sibling
# images reuse them; without it (a VM) nothing is cached.
find_uv() {{
    UV=""
    if [ -n "${{IMAGEKIT_NO_UV:-}}" ]; then
        log "install: IMAGEKIT_NO_UV is set; installing with pip"
        return 0
    fi
    PIPCONF_INDEX=""
    PIPCONF_EXTRA=""
    PIPCONF_CERT=""
    if [ -n "${{PIP_CONFIG_FILE:-}}" ]; then
        # uv reads no pip.conf: it gets the index settings imagekit writes there as flags; anything else, pip
        known='^[[:space:]]*($|[#;]|\\[global\\]|((extra-)?index-url|cert)[[:space:]]*=)'
        other="$(grep -vE "$known" "$PIP_CONFIG_FILE" || true)"
        if [ -n "$other" ]; then
            log "install: the pip.conf secret sets more than index-url, extra-index-url and cert; installing with pip"
            return 0
        fi
        PIPCONF_INDEX="$(sed -n 's/^[[:space:]]*index-url[[:space:]]*=[[:space:]]*//p' "$PIP_CONFIG_FILE" | tail -n 1)"
        PIPCONF_EXTRA="$(sed -n 's/^[[:space:]]*extra-index-url[[:space:]]*=[[:space:]]*//p' "$PIP_CONFIG_FILE")"
        PIPCONF_CERT="$(sed -n 's/^[[:space:]]*cert[[:space:]]*=[[:space:]]*//p' "$PIP_CONFIG_FILE" | tail -n 1)"
    fi
    if [ -n "${{IMAGEKIT_CACHE:-}}" ]; then uv_home="$IMAGEKIT_CACHE/uv-$UV_VERSION"; else uv_home="$(mktemp -d)/uv"; fi
    if [ ! -x "$uv_home/bin/uv" ]; then
        rm -rf "$uv_home.$$"
        if ! "$VENV/bin/python" -m pip install -q --no-cache-dir --target "$uv_home.$$" "uv==$UV_VERSION"; then
            rm -rf "$uv_home.$$"
            log "install: could not get uv==$UV_VERSION from the package index; installing with pip (slower)"
            return 0
        fi
        rm -rf "$uv_home"
        mv "$uv_home.$$" "$uv_home" 2>/dev/null || rm -rf "$uv_home.$$"
    fi
    if ! "$uv_home/bin/uv" --version >/dev/null 2>&1; then
        libc="$(ldd --version 2>&1 | head -n 1)"
        log "install: uv $UV_VERSION cannot run here (it needs glibc >= 2.17; this system: $libc); installing with pip"
        return 0
    fi
    UV="$uv_home/bin/uv"
    log "install: uv $UV_VERSION"
}}

index_answers() {{
    "$VENV/bin/python" - "$1" <<'IMAGEKIT_PY' >/dev/null 2>&1
import os, ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=os.environ.get("PIP_CERT") or None)
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/", timeout=10, context=ctx)
IMAGEKIT_PY
}}

# pkg_install ARGS: `pip install ARGS` into $VENV, by uv where find_uv found it
pkg_install() {{
    if [ -n "$UV" ]; then
        set -- --python "$VENV/bin/python" --index-strategy unsafe-best-match --compile-bytecode "$@"
        if [ -n "${{PIP_FIND_LINKS:-}}" ]; then set -- --find-links "$PIP_FIND_LINKS" "$@"; fi
        if [ -n "$PIPCONF_INDEX" ]; then set -- --index-url "$PIPCONF_INDEX" "$@"; fi
        for url in $PIPCONF_EXTRA; do set -- --extra-index-url "$url" "$@"; done
        if [ -n "${{IMAGEKIT_CACHE:-}}" ]; then
            set -- --cache-dir "$IMAGEKIT_CACHE/uv" --link-mode copy "$@"
        else
            set -- --no-cache "$@"
        fi
        SSL_CERT_FILE="${{PIP_CERT:-${{PIPCONF_CERT:-${{SSL_CERT_FILE:-}}}}}}" "$UV" pip install "$@"
    else
        "$VENV/bin/python" -m pip install "$@"
    fi
}}
"""


def install_build_deps(steps: LayerSteps) -> list[str]:
    pkgs = [*BUILD_DEPS, f"{steps.python}-dev"]
    record = f"/var/lib/imagekit/build-deps.{steps.name}"
    return [
        "install_build_deps() {",
        "    # remembered so drop-build-deps removes only what this layer added",
        "    mkdir -p /var/lib/imagekit",
        f"    : >{_q(record)}",
        f"    for pkg in {' '.join(_q(p) for p in pkgs)}; do",
        f'        dpkg -s "$pkg" >/dev/null 2>&1 || echo "$pkg" >>{_q(record)}',
        "    done",
        f"    if [ -s {_q(record)} ]; then",
        f"        log \"build-deps: $(tr '\\n' ' ' <{_q(record)})\"",
        "        # shellcheck disable=SC2046",
        f"        apt_install $(cat {_q(record)})",
        "        apt_clean",
        "    fi",
        "}",
        "",
        "# pkg_install_or_build ARGS: wheels only first; when that fails, compilers in and the same install again",
        "pkg_install_or_build() {",
        '    if pkg_install --only-binary :all: "$@"; then return 0; fi',
        "    log 'install: not everything installs from wheels; installing compilers and trying again'",
        "    install_build_deps",
        '    pkg_install "$@"',
        "}",
        "",
    ]


def install_body(steps: LayerSteps, index: str) -> list[str]:
    layer = steps.layer
    body = ["pip_env", "find_uv"]
    torch = layer.torch
    if torch:
        body += [
            "# PyTorch's index has the build for each CUDA version; IMAGEKIT_TORCH_INDEX= (empty) turns it off",
            "# a wheelhouse ($PIP_FIND_LINKS) stands in for that index unless IMAGEKIT_TORCH_INDEX says otherwise",
            f'default_index="{index}"',
            'if [ -n "${PIP_FIND_LINKS:-}" ]; then default_index=""; fi',
            'torch_index="${IMAGEKIT_TORCH_INDEX-$default_index}"',
            'extra=""',
            'if [ -n "$torch_index" ]; then',
            "    # an index that does not answer costs pip minutes of retries and fails uv: leave it out, and say so",
            '    if index_answers "$torch_index"; then',
            '        extra="--extra-index-url $torch_index"',
            "    else",
            '        log "install: $torch_index does not answer; torch comes from the default index"',
            "    fi",
            "fi",
        ]
    if layer.requirements:
        lock = f"$IMAGEKIT_SRC/{layer.requirements}"
        body += [
            f'lock="{lock}"',
            '[ -f "$lock" ] || die "requirements lock $lock is missing"',
            "if grep -q -- '--hash=' \"$lock\"; then",
        ]
        if torch:
            body += [
                "    grep -qiE '^torch==' \"$lock\" || die " + _q(f"a hashed lock must pin torch=={torch}"),
                f"    log {_q('install: hashed lock (torch from the lock)')}",
                "    # shellcheck disable=SC2086",
                '    pkg_install_or_build $extra --require-hashes --no-deps -r "$lock"',
            ]
        else:
            body += ["    log 'install: hashed lock'", '    pkg_install_or_build --require-hashes --no-deps -r "$lock"']
        body += ["else"]
        if torch:
            body += [
                f"    log {_q(f'install: lock (no deps) + torch=={torch}')}",
                "    # shellcheck disable=SC2086",
                f'    pkg_install_or_build $extra --no-deps -r "$lock" {_q(f"torch=={torch}")}',
            ]
        else:
            body += ["    log 'install: lock (no deps)'", '    pkg_install_or_build --no-deps -r "$lock"']
        body += ["fi"]
    elif torch:
        body += [
            f"log {_q(f'install: torch=={torch} with its dependencies (no lock)')}",
            "# shellcheck disable=SC2086",
            f"pkg_install_or_build $extra {_q(f'torch=={torch}')}",
        ]
    if layer.pip:
        body += [
            f"log {_q('install: ' + ' '.join(layer.pip))}",
            "pkg_install_or_build " + " ".join(_q(p) for p in layer.pip),
        ]
    if torch:
        check = "import sys, torch; sys.exit(torch.__version__.partition(chr(43))[0] != sys.argv[1])"
        body.append(f'"$VENV/bin/python" -c {_q(check)} {_q(torch)} || die "torch in $VENV is not {torch}"')
    return body
