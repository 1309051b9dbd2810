"""Release tags (`build --tag v1.5.0`, `--tag '{git_sha}'`) and the OCI revision/source labels they go with."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from imagekit.errors import UsageError

TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")  # the OCI distribution spec's tag grammar
GIT_SHA = "{git_sha}"


@dataclass(frozen=True)
class Release:
    """The tags of one build and the git facts the OCI labels carry."""

    tags: tuple[str, ...]
    revision: str  # the commit (org.opencontainers.image.revision), "<sha>-dirty" on a changed tree, "" outside git
    source: str  # where the source is (org.opencontainers.image.source): the origin URL, else file://<work tree>


def expand_tags(tags: Sequence[str], commit: str | None, *, where: Path) -> tuple[str, ...]:
    """The tags with {git_sha} replaced by the commit; UsageError for a tag the registry would refuse."""
    out: list[str] = []
    for raw in tags:
        tag = raw.strip()
        if GIT_SHA in tag:
            if not commit:
                raise UsageError(
                    f"--tag {raw!r}: {where} is not in a git work tree with a commit, so {GIT_SHA} is unknown"
                )
            tag = tag.replace(GIT_SHA, commit)
        if not TAG_RE.fullmatch(tag):
            raise UsageError(
                f"--tag {raw!r}: not a valid image tag (letters, digits, '_', '.', '-'; at most 128; not starting "
                "with '.' or '-')"
            )
        if tag == "latest" or re.fullmatch(r"[0-9a-f]{16}", tag):
            raise UsageError(f"--tag {raw!r}: imagekit sets 'latest' and the 16-digit layer-hash tag itself")
        if tag not in out:
            out.append(tag)
    return tuple(out)


def release_for(root: Path, tags: Sequence[str], store: str = "") -> Release:
    """The release of a build from the spec folder `root`: its tags and the git revision and source."""
    from imagekit.manifest.record import git_source

    git = git_source(root, store)  # the same commit and credential-free remote the signed record names
    # a dirty tree is not HEAD: the tag and the label say so rather than name a commit that did not make the image
    commit = (git.commit + ("-dirty" if git.dirty else "")) if git else ""
    source = (git.remote or git.toplevel.as_uri()) if git else ""
    return Release(expand_tags(tags, commit or None, where=root), commit, source)
