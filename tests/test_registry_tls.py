"""A real HTTPS registry (docker-registry with TLS) and a test CA made here.

The CA signs a server certificate for 127.0.0.1, ``localhost`` and this machine's host name;
nothing is trusted through the system store. Covered: push/pull with ``Registry(ca_file=...)``
(manifest, index and the data blob's range requests all over verified TLS), the CLI's
``--ca-file`` and the configuration file's ``[tls] ca_file``, a one-line "certificate verify
failed" error without the CA or with the wrong one, and plain HTTP (``--plain-http``,
``--insecure-host``) never quietly replacing HTTPS or its verification.

Loopback registries are reached over plain HTTP by default, so the library tests ask for HTTPS
with ``plain_http=False``; the CLI has no such switch, so its tests name the registry by this
machine's host name when that resolves to a loopback address (Debian's /etc/hosts does), and
skip otherwise.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from blobfs.core.cache import MemoryCache
from blobfs.core.http import HttpSource
from blobfs.errors import RegistryError, RegistryNotFound, SourceError
from blobfs.registry import Registry
from tests._cli import Capture, run, run_json
from tests._registry import LocalRegistry, local_registry

FILES = {
    "a.txt": b"over tls\n",
    "dir/b.bin": bytes(range(256)) * 9000,  # 2.2 MiB: more than one chunk and range request
}


# ---------------------------------------------------------------- a test PKI


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_ca(path: Path, cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _write_server_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    names: list[str],
    cert_path: Path,
    key_path: Path,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    sans += [x509.DNSName(n) for n in names]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _loopback_hostname() -> tuple[str, str] | None:
    """This machine's host name and the loopback address it resolves to, when it does (not
    ``localhost``, which blobfs always reaches over plain HTTP)."""
    name = socket.gethostname()
    if not name or name.lower() == "localhost":
        return None
    try:
        addr = socket.gethostbyname(name)
    except OSError:
        return None
    return (name, addr) if ipaddress.ip_address(addr).is_loopback else None


@dataclass
class Tls:
    reg: LocalRegistry
    ca: Path
    """The CA that signed the registry's certificate."""
    wrong_ca: Path
    """Another CA, which did not."""
    named: str | None
    """``hostname:port`` of the registry when the host name resolves to it (for the CLI)."""


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tls]:
    work = tmp_path_factory.mktemp("tls")
    ca_key, ca_cert = _write_ca(work / "ca.pem", "blobfs test CA")
    _write_ca(work / "wrong-ca.pem", "blobfs other CA")
    host = _loopback_hostname()
    names = ["localhost"] + ([host[0]] if host else [])
    cert, key = work / "server.pem", work / "server.key"
    _write_server_cert(ca_key, ca_cert, names, cert, key)
    (work / "reg").mkdir()
    bind = host[1] if host else "127.0.0.1"
    with local_registry(work / "reg", tls=(cert, key), bind=bind) as reg:
        assert reg.base_url.startswith("https://")
        named = f"{host[0]}:{reg.port}" if host else None
        yield Tls(reg, work / "ca.pem", work / "wrong-ca.pem", named)


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src")
    for name, data in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _loopback_ref(tls: Tls, repo: str) -> str:
    return f"127.0.0.1:{tls.reg.port}/{repo}:v1"


def _one_line_tls_failure(message: str) -> None:
    assert "\n" not in message.strip(), message
    assert "certificate verify failed" in message.lower(), message
    assert "https://" in message, message  # the failing URL: HTTPS was tried, and named


# ---------------------------------------------------------------- the library


def test_push_and_pull_over_https_with_the_ca(tls: Tls, src: Path) -> None:
    ref = _loopback_ref(tls, "lib/tree")
    with Registry(plain_http=False, ca_file=tls.ca, backoff=0.01) as reg:
        pushed = reg.push(ref, src, tags=["latest"])
        assert reg.fetch(ref).raw == pushed.raw
        assert sorted(reg.list_tags(ref)) == ["latest", "v1"]
        with reg.pull(ref, cache=MemoryCache()) as archive:
            assert archive.data_url.startswith("https://127.0.0.1:")
            for name, data in FILES.items():
                assert archive.read_file(name) == data
            assert archive.verify().ok


@pytest.mark.parametrize("ca", ["system", "wrong"])
def test_without_the_right_ca_tls_fails_in_one_line(tls: Tls, src: Path, ca: str) -> None:
    ca_file = tls.wrong_ca if ca == "wrong" else None
    ref = _loopback_ref(tls, "lib/refused")
    with Registry(plain_http=False, ca_file=ca_file, retries=0) as reg:
        calls: list[Callable[[], object]] = [lambda: reg.fetch(ref), lambda: reg.push(ref, src)]
        for call in calls:
            with pytest.raises(RegistryError) as info:
                call()
            assert info.value.status is None  # no HTTP answer: refused at the handshake
            _one_line_tls_failure(str(info.value))
    with Registry(plain_http=False, ca_file=tls.ca) as reg, pytest.raises(RegistryNotFound):
        reg.fetch(ref)  # nothing reached the registry: the failed push stored no manifest


def test_default_trust_is_loaded_at_the_first_handshake(
    tls: Tls, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``ca_file`` the registry trusts what httpx's default would (``SSL_CERT_FILE``,
    else certifi), read when TLS is first used, not when the client is built."""
    ref = _loopback_ref(tls, "lib/env-ca")
    with Registry(plain_http=False, retries=0) as reg:
        monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca))  # after construction: still honoured
        pushed = reg.push(ref, src)
        with reg.pull(ref) as archive:  # the data blob's client shares the context
            assert archive.read_file("a.txt") == FILES["a.txt"]
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.wrong_ca))
    with Registry(plain_http=False, retries=0) as reg, pytest.raises(RegistryError) as info:
        reg.fetch(f"127.0.0.1:{tls.reg.port}/lib/env-ca@{pushed.digest}")
    _one_line_tls_failure(str(info.value))


def test_http_source_loads_default_trust_at_the_first_handshake(
    tls: Tls, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ``HttpSource`` on an ``https://`` URL (here the registry's blob URL, read as any
    range server) verifies the server against httpx's default trust, loaded at its first TLS
    handshake: built without it (a plain-HTTP mount never pays for the bundle), it refuses the
    server in one line; trusted through ``SSL_CERT_FILE``, it reads."""
    ref = _loopback_ref(tls, "lib/source")
    with Registry(plain_http=False, ca_file=tls.ca) as reg:
        reg.push(ref, src)
        with reg.pull(ref, cache=MemoryCache()) as archive:
            url, size = archive.data_url, archive.index.data_size
    assert url.startswith("https://")
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.wrong_ca))
    with HttpSource(url, size=size, retries=0) as source, pytest.raises(SourceError) as info:
        source.read_at(0, 16)
    _one_line_tls_failure(str(info.value))
    with HttpSource(url, size=size, retries=0) as source:
        monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca))  # after construction: still honoured
        first = source.read_at(0, size)
    assert hashlib.sha256(first).hexdigest() == url.rsplit(":", 1)[1]


def test_plain_http_to_an_https_registry_is_an_error_not_a_fallback(tls: Tls, src: Path) -> None:
    ref = _loopback_ref(tls, "lib/plain")
    for reg in (Registry(plain_http=True, retries=0), Registry(retries=0)):  # loopback -> http
        with reg, pytest.raises(RegistryError) as info:
            reg.push(ref, src)
        # The TLS server refuses the plain request (HTTP 400); blobfs reports it and does not
        # retry over HTTPS without verification, or at all.
        assert info.value.status == 400, info.value
        assert "http://127.0.0.1" in str(info.value)
        assert "\n" not in str(info.value)
    with Registry(plain_http=False, ca_file=tls.ca) as reg, pytest.raises(RegistryNotFound):
        reg.fetch(ref)  # the refused push stored nothing


# ---------------------------------------------------------------- the CLI


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No user configuration, credentials or caches leak in."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("BLOBFS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BLOBFS_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path


def _named(tls: Tls) -> str:
    if tls.named is None:
        pytest.skip("this machine's host name does not resolve to a loopback address")
    return tls.named


def _assert_pulled(dest: Path) -> None:
    for name, data in FILES.items():
        assert (dest / name).read_bytes() == data, name


def test_cli_push_pull_with_ca_file(
    tls: Tls, src: Path, cli_env: Path, capsysbinary: Capture
) -> None:
    ref = f"{_named(tls)}/cli/tree:v1"
    doc = run_json(capsysbinary, "--ca-file", str(tls.ca), "push", ref, str(src))
    assert doc["status"] == "pushed"
    dest = cli_env / "out"
    rc, _, err = run(capsysbinary, "pull", ref, str(dest), "--ca-file", str(tls.ca), "-q")
    assert rc == 0, err
    _assert_pulled(dest)
    rc, out, err = run(capsysbinary, "--ca-file", str(tls.ca), "cat", ref, "a.txt")
    assert (rc, out) == (0, FILES["a.txt"].decode()), err


@pytest.mark.parametrize("ca", ["system", "wrong"])
def test_cli_without_the_ca_is_one_line_error(
    tls: Tls, src: Path, cli_env: Path, capsysbinary: Capture, ca: str
) -> None:
    ref = f"{_named(tls)}/cli/refused:v1"
    extra = ["--ca-file", str(tls.wrong_ca)] if ca == "wrong" else []
    for argv in (["push", ref, str(src)], ["pull", ref, str(cli_env / "out")], ["ls", ref]):
        rc, out, err = run(capsysbinary, *extra, *argv)
        assert rc == 1, err
        assert out == ""
        assert err.startswith("blobfs: error: "), err
        _one_line_tls_failure(err)
        assert "Traceback" not in err
    assert not (cli_env / "out").exists()


def test_cli_config_file_ca(tls: Tls, src: Path, cli_env: Path, capsysbinary: Capture) -> None:
    ref = f"{_named(tls)}/cli/config:v1"
    conf_dir = cli_env / "conf"
    conf_dir.mkdir()
    (conf_dir / "ca.pem").write_bytes(tls.ca.read_bytes())
    config = conf_dir / "config.toml"
    config.write_text('[tls]\nca_file = "ca.pem"   # relative to this file\n')
    doc = run_json(capsysbinary, "--config", str(config), "push", ref, str(src))
    assert doc["status"] == "pushed"
    rc, _, err = run(capsysbinary, "--config", str(config), "pull", ref, str(cli_env / "a"), "-q")
    assert rc == 0, err
    _assert_pulled(cli_env / "a")
    # --ca-file wins over the file (--no-cache: the pull cached manifest and index): the wrong
    # CA on the command line fails...
    rc, _, err = run(
        capsysbinary,
        "--config",
        str(config),
        "--ca-file",
        str(tls.wrong_ca),
        "ls",
        ref,
        "--no-cache",
    )
    assert rc == 1
    _one_line_tls_failure(err)
    # ...and the right one wins over a wrong CA in the file.
    config.write_text(f'[tls]\nca_file = "{tls.wrong_ca}"\n')
    rc, _, err = run(
        capsysbinary, "--config", str(config), "--ca-file", str(tls.ca), "ls", ref, "--no-cache"
    )
    assert rc == 0, err


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[tls]\nca_file = "missing.pem"\n', "[tls] ca_file: {dir}/missing.pem: "),
        ('[tls]\nca_file = "junk.pem"\n', "[tls] ca_file: {dir}/junk.pem: "),
        ('[tls]\nca_file = ""\n', "[tls] ca_file: must be a non-empty string"),
        ('[tls]\ncafile = "x"\n', "[tls]: unknown key 'cafile'"),
        ('tls = "x"\n', "'tls' must be a table"),
    ],
)
def test_config_file_ca_errors_are_one_line(
    cli_env: Path, capsysbinary: Capture, text: str, problem: str
) -> None:
    (cli_env / "junk.pem").write_text("not a certificate\n")
    config = cli_env / "config.toml"
    config.write_text(text)
    rc, out, err = run(capsysbinary, "--config", str(config), "ls", "127.0.0.1:1/x/y:v1")
    assert (rc, out) == (1, "")
    assert err.startswith(f"blobfs: error: {config}: {problem.format(dir=cli_env)}"), err
    assert err.count("\n") == 1, err


def test_cli_plain_http_never_replaces_https(
    tls: Tls, src: Path, cli_env: Path, capsysbinary: Capture
) -> None:
    named = _named(tls)
    ref = f"{named}/cli/plain:v1"
    host = named.split(":")[0]
    for opts in (["--plain-http"], ["--insecure-host", named], ["--insecure-host", host]):
        # Asked for plain HTTP, blobfs talks plain HTTP, which the TLS registry refuses: an
        # error naming the http:// URL, never HTTPS with verification skipped.
        rc, _, err = run(capsysbinary, *opts, "--ca-file", str(tls.ca), "push", ref, str(src))
        assert rc == 1, err
        assert err.count("\n") == 1, err
        assert f"http://{named}/" in err, err
        assert "HTTP 400" in err, err
    # Another host marked insecure leaves this one on HTTPS, still verified.
    other = ["--insecure-host", "registry.invalid:5000"]
    rc, _, err = run(capsysbinary, *other, "push", ref, str(src))
    assert rc == 1
    _one_line_tls_failure(err)
    rc, _, err = run(capsysbinary, *other, "--ca-file", str(tls.ca), "push", ref, str(src), "-q")
    assert rc == 0, err
