"""The trust commands against a real registry: keygen, sign, attest, verify --policy, inspect."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._cli import Capture, run, run_json
from tests._registry import LocalRegistry, local_registry
from tests._trust import github_predicate

PREDICATE = github_predicate()


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("BLOBFS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BLOBFS_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("BLOBFS_KEY_PASSWORD", "BLOB_KEY_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    with local_registry(tmp_path_factory.mktemp("reg")) as r:
        yield r


_n = iter(range(1_000_000))


def pushed(reg: LocalRegistry, tmp_path: Path, capsys: Capture) -> str:
    n = next(_n)
    src = tmp_path / f"src{n}"
    src.mkdir()
    (src / "hello.txt").write_text(f"hello {n}\n")
    ref = f"{reg.host}/cli/app{n}:v1"
    rc, _, err = run(capsys, "push", ref, str(src), "-q")
    assert rc == 0, err
    return ref


def test_keygen_files_modes_and_no_overwrite(
    tmp_path: Path, capsysbinary: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = tmp_path / "rel"
    doc = run_json(capsysbinary, "keygen", str(prefix))
    assert doc == {
        "private_key": f"{prefix}.key",
        "public_key": f"{prefix}.pub",
        "encrypted": False,
    }
    assert (tmp_path / "rel.key").stat().st_mode & 0o777 == 0o600
    before = (tmp_path / "rel.key").read_bytes()
    rc, _, err = run(capsysbinary, "keygen", str(prefix))
    assert rc == 1
    assert "refusing to overwrite" in err
    assert (tmp_path / "rel.key").read_bytes() == before
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    doc = run_json(capsysbinary, "keygen", str(tmp_path / "enc"), "--password-stdin")
    assert doc["encrypted"] is True
    assert b"ENCRYPTED" in (tmp_path / "enc.key").read_bytes()


def test_sign_verify_inspect(
    reg: LocalRegistry, tmp_path: Path, capsysbinary: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = pushed(reg, tmp_path, capsysbinary)
    monkeypatch.setenv("BLOBFS_KEY_PASSWORD", "pw")
    run_json(capsysbinary, "keygen", str(tmp_path / "k"))
    pub = str(tmp_path / "k.pub")
    # Unsigned: exit 5 and the reason, in text and in JSON.
    rc, out, err = run(capsysbinary, "verify", ref, "--key", pub)
    assert rc == 5
    assert "policy keypair refused: no signature is attached" in err
    rc, out, err = run(capsysbinary, "verify", ref, "--key", pub, "--output", "json")
    assert rc == 5
    doc = json.loads(out)
    assert doc["verified"] is False
    assert doc["status"] == "violation"
    assert doc["policy"] == "keypair"
    signed = run_json(capsysbinary, "sign", ref, "--key", str(tmp_path / "k.key"))
    assert signed["status"] == "signed"
    doc = run_json(capsysbinary, "verify", ref, "--key", pub)
    assert doc["verified"] is True
    assert doc["digest"] == signed["digest"]
    rc, out, _ = run(capsysbinary, "verify", ref, "--key", pub)
    assert rc == 0
    assert out.startswith(f"Verified {ref}")
    info = run_json(capsysbinary, "inspect", ref)
    assert [s["digest"] for s in info["signatures"]] == [signed["signature_digest"]]
    assert info["attestations"] == []
    rc, out, _ = run(capsysbinary, "inspect", ref)
    assert "Signatures:  1 (not verified)" in out
    assert signed["signature_digest"] in out


def test_attest_and_policy_file(reg: LocalRegistry, tmp_path: Path, capsysbinary: Capture) -> None:
    ref = pushed(reg, tmp_path, capsysbinary)
    run_json(capsysbinary, "keygen", str(tmp_path / "rel"))
    run_json(capsysbinary, "keygen", str(tmp_path / "bld"))
    (tmp_path / "prov.json").write_text(json.dumps(PREDICATE))
    policy = tmp_path / "policy.toml"
    policy.write_text(
        f'[[rules]]\nmatch = "{reg.host}/cli/*"\n'
        '[rules.signature]\nkeys = ["rel.pub"]\n'
        '[rules.provenance]\nkeys = ["bld.pub"]\n'
        'github = { repository = "acme/tools", branches = ["main"] }\n'
    )
    run_json(capsysbinary, "sign", ref, "--key", str(tmp_path / "rel.key"))
    rc, _, err = run(capsysbinary, "verify", ref, "--policy", str(policy))
    assert rc == 5
    assert "policy slsa refused: no provenance attestation" in err
    doc = run_json(
        capsysbinary,
        "attest",
        ref,
        "--predicate",
        str(tmp_path / "prov.json"),
        "--key",
        str(tmp_path / "bld.key"),
    )
    assert doc["status"] == "attested"
    doc = run_json(capsysbinary, "verify", ref, "--policy", str(policy))
    assert doc["verified"] is True
    assert doc["policies_applied"] == [str(policy)]
    info = run_json(capsysbinary, "inspect", ref)
    assert info["attestations"][0]["predicate_type"] == "https://slsa.dev/provenance/v1"
    # The same archive through a policy whose branch does not match: refused.
    policy.write_text(policy.read_text().replace('"main"', '"release"'))
    rc, _, err = run(capsysbinary, "verify", ref, "--policy", str(policy))
    assert rc == 5
    assert "matches none of ['refs/heads/release']" in err


def test_errors_are_one_line(reg: LocalRegistry, tmp_path: Path, capsysbinary: Capture) -> None:
    ref = pushed(reg, tmp_path, capsysbinary)
    rc, _, err = run(capsysbinary, "sign", ref)
    assert rc == 1
    assert "keyless signing needs an OIDC identity token" in err
    bad = tmp_path / "bad.toml"
    bad.write_text("[[rules]]\nmatch = 'x'\n")
    rc, _, err = run(capsysbinary, "verify", ref, "--policy", str(bad))
    assert rc == 1
    assert err.count("\n") == 1
    assert "bad.toml: rules[0]: no signature, provenance or rego section" in err
    rc, _, err = run(capsysbinary, "sign", ref, "--key", str(tmp_path / "none.key"))
    assert rc == 1
    assert "none.key: cannot read the private key" in err
    (tmp_path / "p.json").write_text("[]")
    run_json(capsysbinary, "keygen", str(tmp_path / "k"))
    rc, _, err = run(
        capsysbinary,
        "attest",
        ref,
        "--predicate",
        str(tmp_path / "p.json"),
        "--key",
        str(tmp_path / "k.key"),
    )
    assert rc == 1
    assert "p.json: the predicate is not a JSON object" in err
    rc, _, err = run(capsysbinary, "verify", str(tmp_path), "--policy", str(bad))
    assert rc == 2
    assert "verify a registry reference" in err


def test_pull_with_a_policy(reg: LocalRegistry, tmp_path: Path, capsysbinary: Capture) -> None:
    """``pull --key``/``--policy``: a refused reference exits 5 and writes nothing; a signed one
    is pulled, and the JSON names the policies applied."""
    ref = pushed(reg, tmp_path, capsysbinary)
    run_json(capsysbinary, "keygen", str(tmp_path / "k"))
    pub = str(tmp_path / "k.pub")
    dest = tmp_path / "out"
    rc, _, err = run(capsysbinary, "pull", ref, str(dest), "--key", pub)
    assert rc == 5
    assert err.count("\n") == 1
    assert "policy keypair refused: no signature is attached" in err
    assert not dest.exists() or not any(dest.iterdir())
    run_json(capsysbinary, "sign", ref, "--key", str(tmp_path / "k.key"))
    doc = run_json(capsysbinary, "pull", ref, str(dest), "--key", pub)
    assert doc["policies_applied"] == [f"key {pub}"]
    assert doc["file_count"] == 1
    assert (dest / "hello.txt").read_text().startswith("hello ")
    policy = tmp_path / "policy.toml"
    policy.write_text(
        f'[[rules]]\nmatch = "{reg.host}/other/*"\n[rules.signature]\nkeys = ["k.pub"]\n'
    )
    rc, _, err = run(capsysbinary, "pull", ref, str(tmp_path / "out2"), "--policy", str(policy))
    assert rc == 5  # no rule matches the reference: refused
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").iterdir())


def test_cp_from_a_reference_with_a_policy(
    reg: LocalRegistry, tmp_path: Path, capsysbinary: Capture
) -> None:
    """``cp REF:/PATH --key``: refused (exit 5, nothing written) until signed; a local source
    with ``--key`` is a usage error."""
    ref = pushed(reg, tmp_path, capsysbinary)
    run_json(capsysbinary, "keygen", str(tmp_path / "k"))
    pub = str(tmp_path / "k.pub")
    dest = tmp_path / "copy.txt"
    rc, _, err = run(capsysbinary, "cp", f"{ref}:/hello.txt", str(dest), "--key", pub)
    assert rc == 5
    assert "no signature is attached" in err
    assert not dest.exists()
    run_json(capsysbinary, "sign", ref, "--key", str(tmp_path / "k.key"))
    rc, _, err = run(capsysbinary, "cp", f"{ref}:/hello.txt", str(dest), "--key", pub)
    assert rc == 0, err
    assert dest.read_text().startswith("hello ")
    local = tmp_path / "src-local"
    local.mkdir()
    rc, _, err = run(capsysbinary, "cp", f"{local}:/x", str(tmp_path / "y"), "--key", pub)
    assert rc == 2
    assert "registry references" in err


def test_ls_tree_cat_of_a_reference_with_a_policy(
    reg: LocalRegistry, tmp_path: Path, capsysbinary: Capture
) -> None:
    """``ls``/``tree``/``cat REF --key``/``--policy``: refused (exit 5, one line, nothing on
    stdout) until signed, then served as without; a local archive with ``--key`` is a usage
    error."""
    ref = pushed(reg, tmp_path, capsysbinary)
    run_json(capsysbinary, "keygen", str(tmp_path / "k"))
    pub = str(tmp_path / "k.pub")
    commands = (["ls", ref], ["tree", ref], ["cat", ref, "hello.txt"])
    for argv in commands:
        rc, out, err = run(capsysbinary, *argv, "--key", pub)
        assert rc == 5, argv
        assert out == ""
        assert err.count("\n") == 1
        assert "no signature is attached" in err
    run_json(capsysbinary, "sign", ref, "--key", str(tmp_path / "k.key"))
    policy = tmp_path / "policy.toml"
    policy.write_text(
        f'[[rules]]\nmatch = "{reg.host}/cli/*"\n[rules.signature]\nkeys = ["k.pub"]\n'
    )
    for argv in commands:
        for trust in (["--key", pub], ["--policy", str(policy)]):
            assert run(capsysbinary, *argv, *trust) == run(capsysbinary, *argv), (argv, trust)
    rc, out, _ = run(capsysbinary, "cat", ref, "hello.txt", "--policy", str(policy))
    assert rc == 0
    assert out.startswith("hello ")
    local = tmp_path / "local"
    (tmp_path / "src-for-local").mkdir()
    rc, _, err = run(capsysbinary, "create", str(tmp_path / "src-for-local"), str(local))
    assert rc == 0, err
    rc, _, err = run(capsysbinary, "ls", str(local), "--key", pub)
    assert rc == 2
    assert "registry references" in err
