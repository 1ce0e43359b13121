"""Policy files (TOML and YAML): rules per repository pattern, and their errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from blobfs.errors import PolicyError, PolicyViolation
from blobfs.policy import load_policy
from blobfs.policy.sigstore import load_private_key, sign_manifest, write_keypair
from blobfs.policy.slsa import attest
from blobfs.registry import Registry
from tests._registry import LocalRegistry, local_registry
from tests._trust import BUILDER, MiniSigstore, github_predicate, push_archive

PREDICATE = github_predicate()


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    with local_registry(tmp_path_factory.mktemp("reg")) as r:
        yield r


@pytest.fixture(scope="module")
def setup(reg: LocalRegistry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Keys in a policy directory, and archives: signed+attested, signed only, unsigned."""
    d = tmp_path_factory.mktemp("pol")
    (d / "keys").mkdir()
    rel_key, _ = write_keypair(d / "keys" / "release")
    bld_key, _ = write_keypair(d / "keys" / "builder")
    (d / "allow.rego").write_text("package blob.policy\nallow := true\n")
    MiniSigstore().write_trusted_root(d / "root.json")
    refs = {
        "full": f"{reg.host}/team/full:v1",
        "signed": f"{reg.host}/team/signed:v1",
        "unsigned": f"{reg.host}/team/unsigned:v1",
        "elsewhere": f"{reg.host}/other/app:v1",
        "deep": f"{reg.host}/team/sub/app:v1",
    }
    with Registry() as r:
        for name, ref in refs.items():
            push_archive(r, ref, d / f"src-{name}", {"f": name.encode()})
        for name in ("full", "signed", "deep"):
            sign_manifest(r, refs[name], load_private_key(rel_key))
        attest(r, refs["full"], PREDICATE, load_private_key(bld_key))
    return {"dir": str(d), **refs}


TOML = """
version = 1

[[rules]]
match = "{host}/team/*"
[rules.signature]
keys = ["keys/release.pub"]
[rules.signature.keyless]
trusted_root = "root.json"
identities = [{{ github = "acme/tools", branches = ["main"] }}]

[[rules]]
match = ["{host}/team/full"]
[rules.provenance]
keys = ["keys/builder.pub"]
builder = "{builder}"
github = {{ repository = "acme/tools", workflow = "release.yml", branches = ["main"] }}
[rules.rego]
file = "allow.rego"
"""

YAML = """
rules:
  - match: "{host}/team/*"
    signature:
      keys: [keys/release.pub]
  - match: ["{host}/team/full"]
    provenance:
      keys: [keys/builder.pub]
      builder: {builder}
      source: {{repository: "https://github.com/acme/tools", branches: [main]}}
"""


def check(policy_path: Path, ref: str) -> None:
    with Registry(policy=load_policy(policy_path)) as r:
        r.fetch(ref)


@pytest.mark.parametrize(("name", "template"), [("policy.toml", TOML), ("policy.yaml", YAML)])
def test_rules_apply_per_repository(
    reg: LocalRegistry, setup: dict[str, str], name: str, template: str
) -> None:
    path = Path(setup["dir"]) / name
    path.write_text(template.format(host=reg.host, builder=BUILDER))
    check(path, setup["full"])  # signature + provenance (+ rego)
    check(path, setup["signed"])  # only the first rule matches
    with pytest.raises(PolicyViolation, match="no signature"):
        check(path, setup["unsigned"])
    with pytest.raises(PolicyViolation, match=r"no rule of .* matches .*/other/app") as ei:
        check(path, setup["elsewhere"])
    assert ei.value.policy == "policy-file"
    with pytest.raises(PolicyViolation, match="no rule"):
        check(path, setup["deep"])  # team/* does not cross '/'
    pf = load_policy(path)
    assert [r.sections for r in pf.rules][1][0] == "provenance"


def test_unmatched_allow_and_double_star(reg: LocalRegistry, setup: dict[str, str]) -> None:
    path = Path(setup["dir"]) / "loose.toml"
    path.write_text(
        f'unmatched = "allow"\n[[rules]]\nmatch = "{reg.host}/team/**"\n'
        '[rules.signature]\nkeys = ["keys/release.pub"]\n'
    )
    check(path, setup["elsewhere"])
    check(path, setup["deep"])
    with pytest.raises(PolicyViolation):
        check(path, setup["unsigned"])


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no rules: add at least one"),
        ("rules = [", "invalid TOML"),
        ("version = 2\n[[rules]]\nmatch='x'", "version 2 is not supported"),
        ("[[rules]]\nmatch = 'x'\n", "rules\\[0\\]: no signature, provenance or rego section"),
        (
            "[[rules]]\nmatch = 'x'\n[rules.signature]\nkyes = ['a']\n",
            "rules\\[0\\].signature: unknown key 'kyes'",
        ),
        (
            "[[rules]]\nmatch = 'x'\n[rules.signature]\nkeys = ['nope.pub']\n",
            "nope.pub: cannot read the public key",
        ),
        (
            "[[rules]]\nmatch = 'x'\n[rules.signature]\nkeys = 3\n",
            "keys: must be a string or a list of strings",
        ),
        (
            "[[rules]]\nmatch = 'x'\n[rules.provenance]\nbuilder = 'b'\n",
            "provenance.keys: give the public key",
        ),
        ("[[rules]]\nmatch = 'x'\n[rules.rego]\nfile = 'bad.rego'\n", "invalid Rego"),
        (
            "[[rules]]\nmatch = 'x'\n[rules.signature.keyless]\ntrusted_root = 'root.json'\n"
            "identities = [{issuer = 'i'}]\n",
            "needs exactly one of subject and subject_regex",
        ),
        (
            "[[rules]]\nmatch = 'x'\n[rules.signature.keyless]\ntrusted_root = 'root.json'\n"
            "identities = [{github = 'o/r', subject = 's'}]\n",
            "'subject' does not go with 'github'",
        ),
        ("unmatched = 'maybe'\n[[rules]]\nmatch='x'", "unmatched: must be 'deny' or 'allow'"),
        ("surprise = 1\n", "unknown key 'surprise'"),
    ],
)
def test_policy_file_errors_name_file_and_problem(
    setup: dict[str, str], text: str, problem: str
) -> None:
    d = Path(setup["dir"])
    (d / "bad.rego").write_text("package blob.policy\nallow if {\n")
    path = d / "bad.toml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=f"bad\\.toml: .*{problem}"):
        load_policy(path)


def test_yaml_errors_and_missing_file(setup: dict[str, str]) -> None:
    d = Path(setup["dir"])
    path = d / "bad.yml"
    path.write_text("rules: [\n")
    with pytest.raises(PolicyError, match=r"bad\.yml: invalid YAML"):
        load_policy(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(PolicyError, match=r"bad\.yml: policy: must be a table"):
        load_policy(path)
    with pytest.raises(PolicyError, match=r"absent\.toml: cannot read the policy file"):
        load_policy(d / "absent.toml")
