"""The one OCI registry client: manifest digests, tags, blobs and manifests through the `oras` library.

Plain HTTP for a registry on this machine (127.0.0.0/8, localhost: what the Docker Engine also allows), HTTPS
elsewhere. Every failure is a StoreError naming the registry, the repository and what to try.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagekit.errors import StoreError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MANIFEST_ACCEPT = (
    OCI_MANIFEST,
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
PING_TIMEOUT = 10


def split_reference(ref: str) -> tuple[str, str, str]:
    """REGISTRY/REPO[:TAG|@sha256:…] -> (registry, repo, tag or digest); the registry part is required."""
    name, _, digest = ref.partition("@")
    host, slash, rest = name.partition("/")
    if not slash or not ("." in host or ":" in host or host == "localhost"):
        raise StoreError(f"{ref!r}: name the registry too, e.g. 127.0.0.1:5000/team/app (REGISTRY/REPO)")
    last = rest.rsplit("/", 1)[-1]
    tag = ""
    if ":" in last:
        rest, tag = rest.rsplit(":", 1)
    return host, rest, digest or tag


def is_local(host: str) -> bool:
    """True for a registry on this machine (plain HTTP)."""
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]", maxsplit=1)[0] + "]"
    return name in ("localhost", "[::1]") or name.startswith("127.")


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        """The descriptor as it goes into a manifest."""
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


class Registry:
    """One registry host; `client` is an `oras.provider.Registry` (or a stand-in with the same methods)."""

    def __init__(self, host: str, *, client: Any = None) -> None:
        self.host = host
        self.insecure = is_local(host)
        self.prefix = "http" if self.insecure else "https"
        if client is None:
            import oras.provider

            client = oras.provider.Registry(hostname=host, insecure=self.insecure)
        self.client = client
        self._pinged = False

    def _fail(self, what: str, why: Any) -> StoreError:
        return StoreError(f"registry {self.host}: {what}: {why} (check the address and that it accepts pushes)")

    def _ping(self, what: str) -> None:
        import requests

        if self._pinged:
            return
        # fail fast: oras retries a refused connection for minutes
        try:
            self.client.session.get(f"{self.prefix}://{self.host}/v2/", timeout=PING_TIMEOUT)
        except requests.RequestException as exc:
            raise self._fail(what, f"not reachable ({type(exc).__name__})") from None
        self._pinged = True

    def _request(self, what: str, url: str, method: str, **kw: Any) -> Any:
        import requests

        self._ping(what)
        try:
            return self.client.do_request(url, method, **kw)
        except (requests.RequestException, ValueError) as exc:
            raise self._fail(what, exc) from None

    def _url(self, repo: str, kind: str, ref: str) -> str:
        return f"{self.prefix}://{self.host}/v2/{repo}/{kind}/{ref}"

    def manifest_digest(self, repo: str, ref: str) -> str | None:
        """The Docker-Content-Digest the registry serves for repo:ref (or @digest) now; None when it has none."""
        resp = self._request(f"HEAD {repo}:{ref}", self._url(repo, "manifests", ref), "HEAD",
                             headers={"Accept": ", ".join(MANIFEST_ACCEPT)})  # fmt: skip
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise self._fail(f"HEAD {repo}:{ref}", f"HTTP {resp.status_code}")
        digest = resp.headers.get("Docker-Content-Digest")
        if not digest:
            raise self._fail(f"HEAD {repo}:{ref}", "no Docker-Content-Digest header")
        return str(digest)

    def get_manifest(self, repo: str, ref: str) -> dict[str, Any] | None:
        """A manifest as JSON, or None when the registry has no such tag or digest."""
        resp = self._request(f"GET {repo}:{ref}", self._url(repo, "manifests", ref), "GET",
                             headers={"Accept": ", ".join(MANIFEST_ACCEPT)})  # fmt: skip
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise self._fail(f"GET {repo}:{ref}", f"HTTP {resp.status_code}")
        doc = resp.json()
        return doc if isinstance(doc, dict) else None

    def get_blob(self, repo: str, digest: str) -> bytes:
        """A blob's bytes, checked against its digest."""
        resp = self._request(f"GET blob {digest[:19]}", self._url(repo, "blobs", digest), "GET")
        if resp.status_code != 200:
            raise self._fail(f"GET blob {digest} of {repo}", f"HTTP {resp.status_code}")
        data = bytes(resp.content)
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise self._fail(f"GET blob {digest} of {repo}", "content does not match its digest")
        return data

    def tags(self, repo: str) -> list[str]:
        """Every tag of a repository."""
        resp = self._request(f"list tags of {repo}", f"{self.prefix}://{self.host}/v2/{repo}/tags/list", "GET")
        if resp.status_code == 404:
            return []
        if resp.status_code != 200:
            raise self._fail(f"list tags of {repo}", f"HTTP {resp.status_code}")
        return sorted(resp.json().get("tags") or [])

    def push_blob(
        self, repo: str, data: bytes, media_type: str, annotations: dict[str, str] | None = None
    ) -> Descriptor:
        """Upload a blob (skipped when the registry has it); its descriptor."""
        desc = Descriptor(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data), annotations)
        with tempfile.TemporaryDirectory(prefix="imagekit-blob-") as tmp:
            path = Path(tmp) / "blob"
            path.write_bytes(data)
            self._ping(f"push blob to {repo}")
            try:
                resp = self.client.upload_blob(str(path), f"{self.host}/{repo}", desc.to_json())
            except Exception as exc:  # oras raises ValueError/requests errors; the message is what matters
                raise self._fail(f"push blob to {repo}", exc) from None
        if resp.status_code not in (200, 201, 202):
            raise self._fail(f"push blob to {repo}", f"HTTP {resp.status_code}")
        return desc

    def put_manifest(self, repo: str, tag: str, manifest: dict[str, Any]) -> str:
        """PUT an OCI image manifest under a tag; the digest the registry stored it as."""
        body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        resp = self._request(f"push {repo}:{tag}", self._url(repo, "manifests", tag), "PUT",
                             headers={"Content-Type": manifest.get("mediaType", OCI_MANIFEST)}, data=body)  # fmt: skip
        if resp.status_code not in (200, 201):
            detail = resp.text[:200] if hasattr(resp, "text") else ""
            raise self._fail(f"push {repo}:{tag}", f"HTTP {resp.status_code} {detail}".strip())
        return str(resp.headers.get("Docker-Content-Digest") or "sha256:" + hashlib.sha256(body).hexdigest())
