"""Property tests: whatever the loader, the CLI or the store readers are fed, they answer cleanly.

The spec loader returns a LoadedSpec or raises a SpecError; the CLI exits 0, 1 or 2 with one-line errors and never
3; the store readers return records or raise a StoreError/SignatureError. Seeded (derandomize), so CI is stable.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagekit.compat.check import check_spec
from imagekit.errors import SpecError
from imagekit.spec import LoadedSpec, parse_spec

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tts" / "imagekit.yaml"
# IMAGEKIT_FUZZ_EXAMPLES=5000 for a long local run; the default (200: about 2,800 cases in all, ~90 s) keeps CI fast.
EXAMPLES = int(os.environ.get("IMAGEKIT_FUZZ_EXAMPLES", "200"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["12.4", "none", "2.5.1", "3.11", "550", "docker", "ami", "app", "base", "/opt/x", "../x"]),
)
keys = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["version", "name", "layers", "images", "leaf", "parent", "from", "cuda", "torch", "models"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz")
    return folder / "imagekit.yaml"


def _load(text: str, path: Path) -> None:
    try:
        loaded = parse_spec(text, path)
    except SpecError as exc:
        assert exc.problems, "a SpecError must carry at least one problem"
        for problem in exc.problems:
            assert problem.line >= 0
            assert str(problem).startswith(problem.file)
        return
    assert isinstance(loaded, LoadedSpec)
    # A spec that loads must also go through the matrix cleanly (problems are fine, exceptions are not).
    for problem in check_spec(loaded):
        assert problem.line >= 1 and problem.path


@SETTINGS
@given(text=st.text(max_size=300))
def test_arbitrary_text(spec_path: Path, text: str) -> None:
    _load(text, spec_path)


@SETTINGS
@given(doc=values)
def test_arbitrary_structured_yaml(spec_path: Path, doc: Any) -> None:
    _load(yaml.safe_dump(doc, allow_unicode=True), spec_path)


@SETTINGS
@given(doc=st.dictionaries(keys, values, max_size=6))
def test_arbitrary_top_level_mapping(spec_path: Path, doc: dict[str, Any]) -> None:
    base = {"version": 1, "name": "x", "layers": {"a": {"from": {"docker": "x"}}}, "images": {"x": {"leaf": "a"}}}
    _load(yaml.safe_dump({**base, **doc}, allow_unicode=True), spec_path)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    if isinstance(node, dict):
        for key, val in node.items():
            out.append((*prefix, key))
            out.extend(_paths(val, (*prefix, key)))
    elif isinstance(node, list):
        for i, val in enumerate(node):
            out.append((*prefix, i))
            out.extend(_paths(val, (*prefix, i)))
    return out


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


@SETTINGS
@given(data=st.data())
def test_mutated_example(spec_path: Path, data: st.DataObject) -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    for _ in range(data.draw(st.integers(min_value=1, max_value=4), label="mutations")):
        paths = _paths(doc)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths), label="path")
        parent = _parent(doc, path)
        last = path[-1]
        op = data.draw(st.sampled_from(["drop", "rename", "swap", "value", "duplicate"]), label="op")
        if op == "drop":
            del parent[last]
        elif op == "rename" and isinstance(parent, dict):
            new = data.draw(keys, label="new key")
            parent[new] = parent.pop(last)
        elif op == "swap":
            current = parent[last]
            parent[last] = data.draw(
                st.sampled_from([[current], {"x": current}, str(current), 7, 3.5, None, True, []]), label="swap"
            )
        elif op == "value":
            parent[last] = data.draw(values, label="value")
        elif op == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))
    _load(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), spec_path)


def test_the_unmutated_example_loads(spec_path: Path) -> None:
    # Without its files next to it the example still parses: file checks live in validate, not the loader.
    loaded = parse_spec(EXAMPLE.read_text(), spec_path)
    assert sorted(loaded.spec.layers) == ["app", "base", "runtime"]


# --- hostile spec text: control characters, anchors, nesting ---------------------------------------------------

hostile_strings = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x9F), max_size=12),
    st.sampled_from(["a\nRUN touch /pwned", "a\x00b", "\x1b[31m", "/etc/passwd", "${X}", '"; rm -rf /; "', "'", "\\"]),
)
FIELDS = [
    ("layers", "a", "env", "X"),
    ("layers", "a", "workdir"),
    ("layers", "a", "user"),
    ("layers", "a", "run", 0),
    ("layers", "a", "command", 0),
    ("layers", "a", "from", "docker"),
    ("layers", "a", "port"),
    ("verify", "health", "path"),
    ("verify", "health", "timeout"),
    ("verify", "smoke", "path"),
    ("store",),
    ("name",),
    ("version",),
]


def _set(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    node: Any = doc
    for i, part in enumerate(path[:-1]):
        nxt = path[i + 1]
        if isinstance(node, dict):
            node = node.setdefault(part, [] if isinstance(nxt, int) else {})
    if isinstance(node, list):
        node.append(value)
    else:
        node[path[-1]] = value


@settings(SETTINGS, max_examples=EXAMPLES * 3)
@given(
    field=st.sampled_from(FIELDS),
    value=st.one_of(hostile_strings, scalars),
)
def test_hostile_values_never_reach_a_rendered_file(spec_path: Path, field: tuple[Any, ...], value: Any) -> None:
    doc: dict[str, Any] = {
        "version": 1,
        "name": "x",
        "layers": {"a": {"from": {"docker": "x"}}},
        "images": {"x": {"leaf": "a"}},
    }
    _set(doc, field, value)
    text = yaml.safe_dump(doc, allow_unicode=True)
    try:
        loaded = parse_spec(text, spec_path)
    except SpecError as exc:
        assert all("\n" not in str(p) for p in exc.problems)
        return
    from imagekit.render.dockerfile import render_dockerfile
    from imagekit.render.service_unit import render_service_unit

    dockerfile = render_dockerfile(loaded, "x")
    # every instruction line starts with a known keyword or is a continuation/comment: nothing injected
    keywords = ("#", "ARG", "FROM", "LABEL", "USER", "RUN", "COPY", "ENV", "WORKDIR", "EXPOSE", "HEALTHCHECK", "CMD")
    for line in dockerfile.splitlines():
        assert not line or line.startswith(keywords) or line.startswith("    "), line
    assert "\x00" not in dockerfile
    unit = render_service_unit(loaded, "x")
    if unit is not None:
        for line in unit.splitlines():
            assert not line or line.startswith(("#", "[")) or "=" in line, line


anchored = st.integers(min_value=1, max_value=12).flatmap(
    lambda levels: st.tuples(st.just(levels), st.integers(min_value=2, max_value=12))
)


@SETTINGS
@given(shape=anchored, depth=st.integers(min_value=0, max_value=120))
def test_bombs_and_deep_nesting_fail_fast(spec_path: Path, shape: tuple[int, int], depth: int) -> None:
    import time

    levels, width = shape
    lines = ["a0: &a0 [x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]")
    lines.append("deep: " + "[" * depth + "]" * depth)
    t0 = time.monotonic()
    _load("\n".join(lines) + "\n", spec_path)
    assert time.monotonic() - t0 < 2.0


# --- the CLI's argument handling -------------------------------------------------------------------------------

COMMANDS = [
    ["validate"], ["plan"], ["render"], ["manifest", "list"], ["manifest", "show"], ["manifest", "verify"],
    ["resolve"], ["history"], ["promote"], ["rollback"], ["revoke"], ["keygen"], ["build"], ["nightly"],
]  # fmt: skip
OPTIONS = ["-f", "--trust", "--key", "--channel", "--image", "--target", "--json", "-o", "--out", "--report",
           "--type", "--why", "--reason", "--layer"]  # fmt: skip


@pytest.fixture(scope="module")
def cli_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli-fuzz")
    from manifest_helpers import make_spec

    make_spec(root)
    fifo = root / "fifo"
    os.mkfifo(fifo)
    (root / "file").write_text("x")
    (root / "bad-utf8").write_bytes(b"\xff\xfe\xfa")
    (root / "bomb.yaml").write_text("a: &a [1,1,1,1,1,1,1,1,1]\nb: &b [" + ",".join(["*a"] * 9) + "]\n" * 1)
    return {
        "spec": str(root / "imagekit.yaml"),
        "dir": str(root),
        "fifo": str(fifo),
        "file": str(root / "file"),
        "badutf8": str(root / "bad-utf8"),
        "long": str(root / ("n" * 300)),
        "devnull": "/dev/null",
        "devzero": "/dev/zero",
        "missing": str(root / "missing"),
        "key": str(root / "keys" / "imagekit.key"),
        "pub": str(root / "keys" / "imagekit.pub"),
    }


def _value(world: dict[str, str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(sorted(world.values())),
        st.sampled_from(
            [
                "app",
                "rt",
                "stable",
                "docker",
                "ami",
                "all",
                "ecdsa-p256",
                "rsa",
                "awskms:",
                "awskms:x",
                "",
                "-",
                "ffffff",
                "abc",
                "../x",
                "\x1b[2J",
                "a\nb",
            ]
        ),
        st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8),
    )


@settings(
    max_examples=EXAMPLES * 3,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_cli_arguments_never_crash(cli_world: dict[str, str], data: st.DataObject) -> None:
    from typer.testing import CliRunner

    from imagekit.cli import app

    command = data.draw(st.sampled_from(COMMANDS), label="command")
    args = list(command)
    for _ in range(data.draw(st.integers(min_value=0, max_value=5), label="n")):
        if data.draw(st.booleans(), label="option?"):
            args.append(data.draw(st.sampled_from(OPTIONS), label="option"))
        args.append(data.draw(_value(cli_world), label="value"))
    if command[0] in ("build", "nightly") and "--target" not in args:
        return  # these would really build: only their argument checks are fuzzed, with a target they refuse first
    if command[0] in ("build", "nightly"):
        args[args.index("--target") + 1 : args.index("--target") + 2] = ["nope"]
    result = CliRunner().invoke(app, args, env={"AWS_REGION": None, "AWS_DEFAULT_REGION": None})
    err = result.stderr
    assert result.exit_code in (0, 1, 2), (args, result.exit_code, err[-2000:])
    assert "Traceback" not in err and "this is a bug" not in err, (args, err[-2000:])
    assert "\x1b[2J" not in err, "control characters from arguments are escaped"
    ours = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(ours) <= 1, err


# --- the store readers -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from manifest_helpers import fake_build, make_spec

    from imagekit.api import manifest as api

    root = tmp_path_factory.mktemp("store-fuzz")
    with pytest.MonkeyPatch.context() as mp:
        # module scope runs before the per-test config folder: keep the seen heads of this setup out of ~/.config
        mp.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("store-fuzz-config")))
        loaded = make_spec(root)
        one, two = fake_build(loaded, seed="1"), fake_build(loaded, seed="2")
        api.promote(root, "app", one.id, "stable")
        api.promote(root, "app", two.id, "stable")
        api.revoke(root, fake_build(make_spec(root, app="2"), seed="3").id, reason="x")  # another app layer
    return root


record_bytes = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(
        [
            b"[" * 100_000,
            b"{}",
            b"[]",
            b"null",
            b'{"payload": 1}',
            b'{"payload":"", "payloadType":"x", "signatures":[{}]}',
        ]
    ),
    st.builds(lambda d: json.dumps(d).encode(), values),
)
DAMAGE = ["rewrite", "delete", "stray", "file-for-dir", "head-rewrite", "head-delete"]


@settings(
    max_examples=EXAMPLES * 2,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    damage=st.sampled_from(DAMAGE),
    log=st.sampled_from(["_channels/app/stable", "_revocations"]),
    which=st.integers(min_value=0, max_value=3),
    data=record_bytes,
    seq=st.integers(min_value=0, max_value=10**10 - 1),
)
def test_store_readers_refuse_damage_cleanly(
    store_world: Path, tmp_path_factory: pytest.TempPathFactory, damage: str, log: str, which: int, data: bytes, seq: int
) -> None:  # fmt: skip
    import shutil

    from imagekit.errors import ImagekitError
    from imagekit.manifest import channels
    from imagekit.manifest.ledger import open_ledger
    from imagekit.spec import load_spec

    root = tmp_path_factory.mktemp("case")
    shutil.copytree(store_world, root, dirs_exist_ok=True, symlinks=True)
    folder = root / "manifests" / log
    records = sorted(folder.glob("0*.json"))
    target = records[which % len(records)]
    if damage == "rewrite":
        target.write_bytes(data)
    elif damage == "delete":
        target.unlink()
    elif damage == "stray":
        (folder / f"{seq:010d}.json").write_bytes(data)
    elif damage == "file-for-dir":
        shutil.rmtree(folder)
        folder.write_bytes(data)
    elif damage == "head-rewrite":
        (folder / "head.json").write_bytes(data)
    else:
        (folder / "head.json").unlink()
    ledger = open_ledger(load_spec(root / "imagekit.yaml"))
    wait, channels.HEAD_WAIT = channels.HEAD_WAIT, 0.0  # no writer is in flight here: do not wait for a head
    try:
        ledger.revocations  # noqa: B018 - reading is the test
        ledger.channel_records("app", "stable")
    except ImagekitError as exc:
        assert exc.exit_code in (1, 2)
        assert all("\n" not in line for line in exc.lines())
        return
    finally:
        channels.HEAD_WAIT = wait
    # only a stray number that happens to be the next one, or a rewrite with identical bytes, can read clean
    assert damage in ("stray", "rewrite", "head-rewrite"), damage


# --- the probe's output and the service's answers: the image under test is the author (#21) -------------------

probe_sections = st.sampled_from(
    ["os", "python", "user", "torch", "nvidia_smi", "pip", "dpkg", "models", "cuda_libs", "cuda_check", "x"]
)
hostile_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["\ud800", "\x1b[2J", "[/]", "\\[red]", "", "](http://x)", "<img src=x>", "9" * 5000]),
)
hostile_values = st.recursive(
    st.one_of(scalars, hostile_text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(hostile_text, inner, max_size=4)),
    max_leaves=25,
)


@pytest.fixture(scope="module")
def probe_world() -> tuple[LoadedSpec, str, dict[str, Any]]:
    from imagekit.spec import load_spec

    loaded = load_spec(EXAMPLE)
    sample = {
        "probe_version": 2,
        "python": {"version": "3.11.2"},
        "torch": {"version": "2.5.1", "cuda": "12.4", "cuda_available": False},
        "nvidia_smi": {"gpus": []},
        "pip": {"packages": {"torch": "2.5.1"}},
        "dpkg": {"packages": {"libc6": "2.36-9"}},
    }
    return loaded, sorted(loaded.spec.images)[0], sample


def _judge_probe(world: tuple[LoadedSpec, str, dict[str, Any]], raw: bytes | str) -> None:
    from imagekit.manifest.statement import canonical_json
    from imagekit.verify.docker_host import judged
    from imagekit.verify.policy import gpu_visible
    from imagekit.verify.probe_input import ProbeInputError, parse_probe

    loaded, image, _ = world
    try:
        probe, problems = parse_probe(raw, last_line=True)
    except ProbeInputError:
        return
    # what comes out is valid, bounded, serializable data: a report and a record can hold it
    json.dumps(probe, ensure_ascii=False).encode("utf-8")
    canonical_json(probe)
    assert all(isinstance(p, str) and "\n" not in p for p in problems)
    gpu_visible(probe)
    for failure in judged(probe, loaded, image, "optional"):
        assert isinstance(failure, str)


@SETTINGS
@given(section=probe_sections, value=hostile_values)
def test_probe_sections_of_any_shape_are_judged_never_crash(
    probe_world: tuple[LoadedSpec, str, dict[str, Any]], section: str, value: Any
) -> None:
    doc = copy.deepcopy(probe_world[2])
    doc[section] = value
    _judge_probe(probe_world, json.dumps(doc, ensure_ascii=False))


@SETTINGS
@given(
    raw=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200),
        st.builds(lambda n: "[" * n + "]" * n, st.integers(0, 5000)),
        st.builds(lambda n: '{"probe_version": ' + "1" * n + "}", st.integers(1, 6000)),
        st.sampled_from(['{"a": NaN}', '{"a": 1e999}', '{"a": "\\ud800"}', "[]", "null", '"x"', "\n\n{}"]),
    )
)
def test_probe_output_of_any_bytes_is_a_probe_or_refused(
    probe_world: tuple[LoadedSpec, str, dict[str, Any]], raw: bytes | str
) -> None:
    _judge_probe(probe_world, raw)


@SETTINGS
@given(value=hostile_text)
def test_hostile_text_is_inert_in_every_medium(value: str) -> None:
    import io
    import re
    import xml.etree.ElementTree as ET

    from imagekit.cli.console import SafeConsole, escape
    from imagekit.nightly.report import md, xml_text

    buf = io.StringIO()
    SafeConsole(file=buf, force_terminal=True, highlight=False).print(f"[bold]x[/] {escape(value)}")
    assert buf.getvalue().count("\x1b") == 2  # rich's own bold and reset only
    assert "\n" not in md(value) and re.search(r"(?<!\\)[<>\[\]#!|`*]", md(value).replace("\\\\", "")) is None
    ET.fromstring(f"<a>{xml_text(value).replace('&', '&amp;').replace('<', '&lt;')}</a>".encode("utf-8", "replace"))


@pytest.fixture(scope="module")
def raw_server() -> Any:
    import socket
    import threading

    state: dict[str, bytes] = {"answer": b""}
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(2)
                    conn.recv(65536)
                    conn.sendall(state["answer"])
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    yield state, f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


http_status = st.one_of(
    st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.1 302 Found", b"HTTP/1.0 999 X", b"HTTP/1.1 abc", b"SSH-2.0", b""]),
    st.binary(max_size=20),
)
http_header = st.one_of(
    st.sampled_from(
        [
            b"Location: http://169.254.169.254/latest/meta-data/",
            b"Content-Length: 99999999999",
            b"Content-Length: -1",
            b"Transfer-Encoding: chunked",
            b"Content-Type: [link=http://x]a\x1b[31m",
        ]
    ),
    st.binary(max_size=40),
)


@SETTINGS
@given(status=http_status, headers=st.lists(http_header, max_size=4), body=st.binary(max_size=300))
def test_service_answers_of_any_shape_are_an_answer_or_an_oserror(
    raw_server: Any, status: bytes, headers: list[bytes], body: bytes
) -> None:
    from imagekit.verify import http as service_http

    state, base = raw_server
    state["answer"] = b"\r\n".join([status, *headers, b"", body])
    try:
        code, got, data = service_http.request(base, "GET", "/ready", timeout=2, limit=256)
    except OSError:
        return
    assert isinstance(code, int) and len(data) <= 256
    assert all(len(v) <= service_http.HEADER_VALUE_LIMIT for v in got.values())
