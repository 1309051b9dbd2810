"""Debian version comparison (dpkg's verrevcmp, deb-version(7)): epoch, upstream version, revision. Pure."""

from __future__ import annotations

import re

# deb-version(7): [epoch:]upstream[-revision]; anything else from an image or an index is not a version
VERSION_RE = re.compile(r"^(?:\d{1,9}:)?[0-9A-Za-z][0-9A-Za-z.+~:-]{0,127}$")


def is_version(text: str) -> bool:
    """True for a string that is a Debian version (bounded length, the allowed characters)."""
    return bool(VERSION_RE.match(text))


def _split(version: str) -> tuple[int, str, str]:
    epoch = 0
    if ":" in version:
        head, version = version.split(":", 1)
        epoch = int(head) if head.isdigit() else 0
    upstream, _, revision = version.rpartition("-") if "-" in version else (version, "", "")
    return epoch, upstream, revision or "0"


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _verrevcmp(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) else 0
            bc = _order(b[j]) if j < len(b) else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def compare(a: str, b: str) -> int:
    """<0, 0, >0 as dpkg --compare-versions a lt/eq/gt b."""
    ea, ua, ra = _split(a)
    eb, ub, rb = _split(b)
    if ea != eb:
        return ea - eb
    return _verrevcmp(ua, ub) or _verrevcmp(ra, rb)


def older(a: str, b: str) -> bool:
    """True when version a sorts before version b."""
    return compare(a, b) < 0
