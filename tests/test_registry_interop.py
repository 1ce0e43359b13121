"""What blobfs pushes, read by an independent client (skopeo), and the reverse.

Every archive of tests/fixtures/reference-v1 (written by the Go reference) is pushed with
``Registry.push`` of its local archive directory to a real docker-registry; then:

- blobfs pulls it back and every file reads with the sha256 of the matching ``*-expected.json``
  (tests/test_registry_source.py reads one of them through raw blob uploads and an HttpSource;
  here it is the whole push/fetch/pull path, for all four);
- skopeo (Debian's 1.9) sees the exact manifest bytes and digest blobfs reported, the same tags,
  and copies the artifact to an OCI layout, a ``dir:`` and other repositories/registries keeping
  every digest; what skopeo uploaded reads back through blobfs.

oras-py as a second independent client is in tests/test_registry_client.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from blobfs.core import Archive, open_file
from blobfs.core.cache import MemoryCache
from blobfs.registry import ARTIFACT_TYPE, DATA_MEDIA_TYPE, INDEX_MEDIA_TYPE, Manifest, Registry
from tests._registry import LocalRegistry, local_registry
from tests.test_fixtures import ARCHIVES, FIXTURES, expected_files

SKOPEO = shutil.which("skopeo")

needs_skopeo = pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed (make setup)")


@dataclass
class Env:
    reg: LocalRegistry
    other: LocalRegistry
    client: Registry
    pushed: dict[str, Manifest]

    def ref(self, name: str, tag: str = "v1") -> str:
        return f"{self.reg.host}/ref/{name}:{tag}"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("interop")
    (work / "a").mkdir()
    (work / "b").mkdir()
    with (
        local_registry(work / "a") as reg,
        local_registry(work / "b") as other,
        Registry(backoff=0.01) as client,
    ):
        pushed = {
            name: client.push(
                f"{reg.host}/ref/{name}:v1",
                FIXTURES / name,
                tags=["latest"],
                annotations={"org.example.fixture": name},
            )
            for name in ARCHIVES
        }
        yield Env(reg, other, client, pushed)


def skopeo(*args: str) -> bytes:
    """Run skopeo; its stdout. A failure shows skopeo's own message."""
    assert SKOPEO is not None
    p = subprocess.run([SKOPEO, *args], capture_output=True, timeout=120, check=False)
    assert p.returncode == 0, f"skopeo {args[0]}: {p.stderr.decode(errors='replace')}"
    return p.stdout


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def assert_reads_as_expected(archive: Archive, name: str) -> None:
    """Every file of ``archive`` (and nothing else) has the size and sha256 expected of the
    reference archive ``name``. Files are prefetched first: 5,000 small files would otherwise
    cost 5,000 range requests."""
    files = expected_files(name)
    archive.prefetch("")
    assert sorted(e.path for e in archive.walk()) == sorted(f.path for f in files)
    for f in files:
        content = archive.read_file(f.path)
        assert len(content) == f.size, f.path
        assert hashlib.sha256(content).hexdigest() == f.sha256, f.path


# ---------------------------------------------------------------- blobfs push -> blobfs pull


@pytest.mark.parametrize("name", list(ARCHIVES))
def test_reference_archive_pushed_and_pulled_back(env: Env, name: str) -> None:
    manifest = env.pushed[name]
    index_raw = (FIXTURES / name / "index.blob").read_bytes()
    data_raw = (FIXTURES / name / "data.blob").read_bytes()
    # The local archive is pushed as it is: the layers are the Go reference's exact blobs.
    assert manifest.index_descriptor.digest == sha256_of(index_raw)
    assert manifest.index_descriptor.size == len(index_raw)
    assert manifest.data_descriptor.digest == sha256_of(data_raw)
    assert manifest.data_descriptor.size == len(data_raw)
    assert manifest.annotations.get("org.example.fixture") == name
    assert env.client.fetch(env.ref(name, "latest")).raw == manifest.raw
    with env.client.pull(env.ref(name), cache=MemoryCache()) as archive:
        assert archive.manifest.digest == manifest.digest
        assert_reads_as_expected(archive, name)
        assert archive.verify().ok


# ---------------------------------------------------------------- skopeo reads what blobfs pushed


@needs_skopeo
@pytest.mark.parametrize("name", list(ARCHIVES))
def test_skopeo_sees_the_exact_manifest(env: Env, name: str) -> None:
    manifest = env.pushed[name]
    host = env.reg.host
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{env.ref(name)}")
    assert raw == manifest.raw
    assert sha256_of(raw) == manifest.digest
    by_digest = f"docker://{host}/ref/{name}@{manifest.digest}"
    assert skopeo("inspect", "--raw", "--tls-verify=false", by_digest) == manifest.raw
    doc = json.loads(raw)
    assert doc["artifactType"] == ARTIFACT_TYPE
    assert [(layer["mediaType"], layer["digest"]) for layer in doc["layers"]] == [
        (INDEX_MEDIA_TYPE, manifest.index_descriptor.digest),
        (DATA_MEDIA_TYPE, manifest.data_descriptor.digest),
    ]


@needs_skopeo
def test_skopeo_lists_the_same_tags(env: Env) -> None:
    env.client.tag(env.ref("mixed-zstd", "extra"), env.pushed["mixed-zstd"].digest)
    listed = json.loads(
        skopeo("list-tags", "--tls-verify=false", f"docker://{env.reg.host}/ref/mixed-zstd")
    )
    assert sorted(listed["Tags"]) == ["extra", "latest", "v1"]
    assert sorted(env.client.list_tags(env.ref("mixed-zstd"))) == sorted(listed["Tags"])


@needs_skopeo
@pytest.mark.parametrize("name", list(ARCHIVES))
def test_skopeo_copy_to_an_oci_layout_keeps_digests(env: Env, tmp_path: Path, name: str) -> None:
    manifest = env.pushed[name]
    layout = tmp_path / "oci"
    skopeo(
        "copy", "--quiet", "--src-tls-verify=false", f"docker://{env.ref(name)}", f"oci:{layout}:v1"
    )
    index = json.loads((layout / "index.json").read_text())
    [entry] = index["manifests"]
    assert entry["digest"] == manifest.digest
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "v1"
    blobs = layout / "blobs" / "sha256"
    for path in blobs.iterdir():  # a content-addressed store: every name is its content's hash
        assert sha256_of(path.read_bytes()) == "sha256:" + path.name
    assert (blobs / manifest.digest.removeprefix("sha256:")).read_bytes() == manifest.raw
    # The copied blobs are a blobfs archive again, read locally.
    with open_file(
        blobs / manifest.index_descriptor.digest.removeprefix("sha256:"),
        blobs / manifest.data_descriptor.digest.removeprefix("sha256:"),
    ) as archive:
        assert_reads_as_expected(archive, name)
        assert archive.verify().ok


@needs_skopeo
def test_skopeo_copy_to_a_dir_keeps_the_manifest_bytes(env: Env, tmp_path: Path) -> None:
    manifest = env.pushed["wide-zstd"]
    out = tmp_path / "dir"
    skopeo(
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        f"docker://{env.ref('wide-zstd')}",
        f"dir:{out}",
    )
    assert (out / "manifest.json").read_bytes() == manifest.raw
    for desc in (manifest.index_descriptor, manifest.data_descriptor):
        blob = (out / desc.digest.removeprefix("sha256:")).read_bytes()
        assert (sha256_of(blob), len(blob)) == (desc.digest, desc.size)


@needs_skopeo
@pytest.mark.parametrize("name", ["mixed-allzstd", "wide-zstd"])
def test_what_skopeo_copied_reads_back_through_blobfs(env: Env, name: str) -> None:
    manifest = env.pushed[name]
    src = f"docker://{env.reg.host}/ref/{name}@{manifest.digest}"
    targets = [
        f"{env.reg.host}/copied/{name}:c1",  # another repository of the same registry
        f"{env.other.host}/elsewhere/{name}:c2",  # another registry (skopeo uploads the blobs)
    ]
    for target in targets:
        skopeo(
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            src,
            f"docker://{target}",
        )
        assert env.client.fetch(target).raw == manifest.raw
        with env.client.pull(target, cache=MemoryCache()) as archive:
            assert archive.manifest.digest == manifest.digest
            assert_reads_as_expected(archive, name)
