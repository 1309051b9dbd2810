"""The install phase of a layer's script: uv (or pip where uv cannot run) from the lock into the venv. Pure.

Split from scripts.py, which assembles the phases and imports this module (never the other way round); this module
owns how Python packages get installed and in which parts.

The lock is installed in parts, heavy first: each group of `venv_layers` (package-name globs; by default the
torch stack in five: torch; triton; cuDNN; cuBLAS, cuFFT and cuSOLVER; the other NVIDIA and CUDA wheels), then the
rest of the lock.
The Dockerfile runs one RUN per part with only that part's lines mounted, so a changed light pin leaves the heavy
RUNs cached and their image layers (and registry blobs) as they were, and no layer is one 5 GB stream; a VM installs
the same parts in the same order from one script run.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from fnmatch import fnmatchcase

from imagekit.spec import Layer

BUILD_DEPS = ("build-essential",)
# Sized on the GPU example (torch 2.14.1+cu130, unpacked, read off its image's `docker history`): torch 1.23 GB;
# triton 0.9 GB; cuDNN 0.92 GB; cuBLAS, cuFFT and cuSOLVER 1.1 GB; the other NVIDIA and CUDA wheels ~1.1 GB. In three
# groups the second was 2.5 GB; five keep every step near 1 GB, so none is one long stream (budget.max_layer_bytes).
DEFAULT_VENV_LAYERS: tuple[tuple[str, ...], ...] = (
    ("torch",),
    ("triton", "pytorch-triton*"),
    ("nvidia-cudnn*",),
    ("nvidia-cublas*", "nvidia-cufft*", "nvidia-cusolver*"),
    ("nvidia-*", "cuda-*"),
)
LIGHT_PART = "light"
LOCK_PARTS_DIR = "/imagekit-lock"  # inside the Dockerfile's <layer>-lock stage only


def venv_groups(layer: Layer) -> tuple[tuple[str, ...], ...]:
    """The layer's heavy groups of package-name globs (its own `venv_layers`, else the default)."""
    return layer.venv_layers if layer.venv_layers is not None else DEFAULT_VENV_LAYERS


def lock_parts(layer: Layer) -> list[str]:
    """The parts a layer's lock installs in, in order: heavy1..N, then light."""
    return [*(f"heavy{i}" for i in range(1, len(venv_groups(layer)) + 1)), LIGHT_PART]


def part_of(layer: Layer, name: str) -> str:
    """The part a (normalized) package name goes into: the first group with a matching glob, else light."""
    for i, group in enumerate(venv_groups(layer), start=1):
        if any(fnmatchcase(name, glob) for glob in group):
            return f"heavy{i}"
    return LIGHT_PART


def _ere(group: Sequence[str]) -> str:
    # globs are [a-z0-9*-] only (spec_model checks), so `*` is the one character with a meaning
    return "^(" + "|".join(glob.replace("*", ".*") for glob in group) + ")$"


def lock_part_helper(layer: Layer) -> str:
    """`lock_part PART LOCK`: the sh function that prints the lock's entries of one part (awk, as POSIX has it)."""
    regexes = " ".join(_ere(group) for group in venv_groups(layer))
    return f"""\
# lock_part PART LOCK: the entries of LOCK (backslash-continued, hashes and all) whose normalized name is in PART;
# options (--index-url, --find-links, ...) go to every part, nested files and editables (-r, -c, -e) to light only
lock_part() {{
    awk -v part="$1" -v groups={_q(regexes)} '
    function emit(entry, first, name, nested, p, i) {{
        first = entry
        sub(/^[ \\t]+/, "", first)
        if (first == "" || first ~ /^#/) return
        nested = (first ~ /^(-r|--requirement|-c|--constraint|-e|--editable)([ =]|$)/)
        if (first ~ /^-/ && !nested) {{ print entry; return }}
        name = first
        if (first ~ /^-/) name = ""
        sub(/[^A-Za-z0-9._-].*$/, "", name)
        name = tolower(name)
        gsub(/[._-]+/, "-", name)
        p = "{LIGHT_PART}"
        for (i = 1; i <= n; i++) if (name != "" && name ~ re[i]) {{ p = "heavy" i; break }}
        if (p == part) print entry
    }}
    BEGIN {{ n = split(groups, re, " ") }}
    {{
        buf = (cont ? buf "\\n" : "") $0
        cont = ($0 ~ /\\\\$/)
        if (!cont) {{ emit(buf); buf = "" }}
    }}
    END {{ if (buf != "") emit(buf) }}
    ' "$2"
}}

# has_requirements FILE: whether FILE names any package (not only options)
has_requirements() {{
    grep -qE '^[[:space:]]*[A-Za-z0-9]' "$1"
}}
"""


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


def install_build_deps(layer_name: str, python: str) -> list[str]:
    """The sh functions that bring compilers in when a package has no wheel."""
    pkgs = [*BUILD_DEPS, f"{python}-dev"]
    record = f"/var/lib/imagekit/build-deps.{layer_name}"
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


def _torch_extra(index: str) -> list[str]:
    return [
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


def _check_lock(torch: str | None) -> list[str]:
    if not torch:
        return []
    return [
        "if grep -q -- '--hash=' \"$lock\" && ! grep -qiE '^torch==' \"$lock\"; then",
        "    die " + _q(f"a hashed lock must pin torch=={torch}"),
        "fi",
    ]


def lock_parts_body(layer: Layer) -> list[str]:
    """The `lock-parts` phase (the Dockerfile's <layer>-lock stage): the lock cut into one file per part."""
    return [
        f'lock="$IMAGEKIT_SRC/{layer.requirements}"',
        '[ -f "$lock" ] || die "requirements lock $lock is missing"',
        *_check_lock(layer.torch),
        f"mkdir -p {LOCK_PARTS_DIR}",
        f"for part in {' '.join(lock_parts(layer))}; do",
        f'    lock_part "$part" "$lock" >"{LOCK_PARTS_DIR}/$part"',
        f'    count="$(grep -cE \'^[[:space:]]*[A-Za-z0-9]\' "{LOCK_PARTS_DIR}/$part" || true)"',
        '    log "lock-parts: $part: $count packages"',
        "done",
    ]


def _install_part(layer: Layer) -> list[str]:
    torch = layer.torch
    torch_part = part_of(layer, "torch") if torch else ""
    pin = f" {_q(f'torch=={torch}')}" if torch else ""
    return [
        "# install_part PART FILE: one part of the lock into $VENV (no deps: the lock has them all)",
        "install_part() {",
        "    if grep -q -- '--hash=' \"$2\"; then",
        '        log "install: $1 (hashed lock)"',
        "        # shellcheck disable=SC2086",
        '        pkg_install_or_build $extra --require-hashes --no-deps -r "$2"',
        *(
            [
                f'    elif [ "$1" = {torch_part} ]; then',
                f'        log "install: $1 (lock, no deps) + torch=={torch}"',
                "        # shellcheck disable=SC2086",
                f'        pkg_install_or_build $extra --no-deps -r "$2"{pin}',
            ]
            if torch
            else []
        ),
        "    else",
        '        log "install: $1 (lock, no deps)"',
        "        # shellcheck disable=SC2086",
        '        pkg_install_or_build $extra --no-deps -r "$2"',
        "    fi",
        "}",
    ]


def install_body(layer: Layer, index: str) -> list[str]:
    """The `install` phase: the lock part by part ($IMAGEKIT_PART picks one; unset: all, heavy first), then pip."""
    body = ["pip_env", "find_uv"]
    torch = layer.torch
    body += _torch_extra(index) if torch else ['extra=""']
    pip_items = " ".join(_q(p) for p in layer.pip)
    if layer.requirements:
        torch_part = part_of(layer, "torch") if torch else ""
        # a torch pin with an unhashed lock installs with its part even when no line of the lock falls there
        wanted = 'has_requirements "$parts/$part"' + (f' || [ "$part" = {torch_part} ]' if torch else "")
        body += [
            *_install_part(layer),
            f'lock="$IMAGEKIT_SRC/{layer.requirements}"',
            '[ -f "$lock" ] || die "requirements lock $lock is missing"',
            "# the Dockerfile mounts one part's lines at $lock and names it in IMAGEKIT_PART; a VM has the whole lock",
            'if [ -z "${IMAGEKIT_PART:-}" ]; then',
            *(f"    {line}" for line in _check_lock(torch)),
            "    :",
            "fi",
            'parts="$(mktemp -d)"',
            f"for part in ${{IMAGEKIT_PART:-{' '.join(lock_parts(layer))}}}; do",
            '    lock_part "$part" "$lock" >"$parts/$part"',
            f"    if {wanted}; then",
            '        install_part "$part" "$parts/$part"',
            "    else",
            '        log "install: $part: no package of the lock"',
            "    fi",
            *(
                [
                    f'    if [ "$part" = {LIGHT_PART} ]; then',
                    f"        log {_q('install: ' + ' '.join(layer.pip))}",
                    f"        pkg_install_or_build {pip_items}",
                    "    fi",
                ]
                if layer.pip
                else []
            ),
            "done",
            'rm -rf "$parts"',
        ]
    else:
        if torch:
            body += [
                f"log {_q(f'install: torch=={torch} with its dependencies (no lock)')}",
                "# shellcheck disable=SC2086",
                f"pkg_install_or_build $extra {_q(f'torch=={torch}')}",
            ]
        if layer.pip:
            body += [f"log {_q('install: ' + ' '.join(layer.pip))}", f"pkg_install_or_build {pip_items}"]
    if torch:
        check = "import sys, torch; sys.exit(torch.__version__.partition(chr(43))[0] != sys.argv[1])"
        verify = f'"$VENV/bin/python" -c {_q(check)} {_q(torch)} || die "torch in $VENV is not {torch}"'
        if layer.requirements:
            # torch imports only once its dependencies are in, which the light part (installed last) completes
            body += [
                f'case " ${{IMAGEKIT_PART:-{LIGHT_PART}}} " in *" {LIGHT_PART} "*)',
                f"    {verify}",
                "    ;;",
                "esac",
            ]
        else:
            body.append(verify)
    return body
