"""Benchmark of trust policies: what evaluating them adds to a pull from a local registry.

``python -m tests.bench_policy`` (the bench runner may call :func:`rows` or :func:`main`).
A local ``docker-registry`` (tests/_registry.py) serves one small archive, signed with a key
pair (sigstore bundle), keyless (test CA/CT log/Rekor, verified with ``sigstore``), and
attested (SLSA v1 in a DSSE envelope). Measured, median of :data:`RUNS` pulls each (a warm
process and connection pool, registry caches off so every pull asks the registry):

- ``Registry.pull`` + close with no policy (the baseline);
- the same with ``KeyPairPolicy``, ``KeylessPolicy``, ``SLSAPolicy`` (three validators),
  ``OPAPolicy`` (verified attestations in the input) and all four under ``require_all``;

each reported as the median of the per-run differences to a plain pull (alternating, so both
see the same load), and as the median time of ``policy.evaluate`` alone. Target: < 50 ms.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from blobfs.policy import Policy, require_all
from blobfs.policy.opa import OPAPolicy
from blobfs.policy.sigstore import (
    SIGNATURE_ARTIFACT_TYPE,
    Identity,
    KeylessPolicy,
    KeyPairPolicy,
    generate_keypair,
    load_private_key,
    sign_manifest,
)
from blobfs.policy.slsa import (
    SLSAPolicy,
    attest,
    github_actions_workflow,
    require_builder,
    require_source,
)
from blobfs.registry import PolicyRequest, Reference, Registry
from tests._registry import local_registry
from tests._trust import (
    BUILDER,
    GITHUB_ISSUER,
    WORKFLOW_SAN,
    MiniSigstore,
    github_predicate,
    push_archive,
)

__all__ = ["main", "rows"]

RUNS = 21
"""Pulls per variant: policy evaluation is a few milliseconds, so many runs steady the median."""

PREDICATE = github_predicate()
REGO = f"""package blob.policy
import rego.v1
default allow := false
allow if {{ some a in input.attestations; a.predicate.runDetails.builder.id == "{BUILDER}" }}
"""


def _pull_ms(registry: Registry, ref: str) -> float:
    t0 = time.perf_counter()
    registry.pull(ref).close()
    return (time.perf_counter() - t0) * 1000


def _added_ms(plain: Registry, guarded: Registry, ref: str) -> tuple[float, float]:
    """Median pull time without the policy, and the median of the per-run differences (pulls
    with and without alternate, so both see the same load on a shared machine)."""
    base, diffs = [], []
    for _ in range(RUNS):
        b = _pull_ms(plain, ref)
        diffs.append(_pull_ms(guarded, ref) - b)
        base.append(b)
    return statistics.median(base), statistics.median(diffs)


def _evaluate_ms(policy: Policy, request: PolicyRequest) -> float:
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        policy.evaluate(request)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def rows() -> list[tuple[str, float]]:
    """``(variant, milliseconds)``: the baseline pull, then what each policy adds to it."""
    with tempfile.TemporaryDirectory(prefix="blobfs-bench-policy-") as tmp:
        d = Path(tmp)
        with local_registry(d / "reg") as reg, Registry() as plain:
            ref = f"{reg.host}/bench/policy:v1"
            manifest = push_archive(
                plain, ref, d / "src", {f"f{i}.txt": b"x" * 1000 for i in range(100)}
            )
            pair = generate_keypair()
            key = load_private_key(pair.private_pem)
            sign_manifest(plain, ref, key)
            attest(plain, ref, PREDICATE, key)
            mini = MiniSigstore()
            root = mini.write_trusted_root(d / "root.json")
            plain.attach(
                ref,
                artifact_type=SIGNATURE_ARTIFACT_TYPE,
                payload=mini.bundle(manifest.raw),
                payload_media_type=SIGNATURE_ARTIFACT_TYPE,
            )
            keypair = KeyPairPolicy(pair.public_pem)
            keyless = KeylessPolicy(root, [Identity(GITHUB_ISSUER, subject=WORKFLOW_SAN)])
            slsa = SLSAPolicy(
                pair.public_pem,
                [
                    require_builder(BUILDER),
                    require_source("https://github.com/acme/tools", branches=["main"]),
                    github_actions_workflow("acme/tools", workflow="release.yml"),
                ],
            )
            opa = OPAPolicy(REGO, public_keys=pair.public_pem)
            variants: list[tuple[str, Policy]] = [
                ("key pair", keypair),
                ("keyless (sigstore)", keyless),
                ("SLSA provenance", slsa),
                ("Rego (regopy)", opa),
                ("all four", require_all(keypair, keyless, slsa, opa)),
            ]
            _pull_ms(plain, ref)  # warm the connection pool and imports
            request = PolicyRequest(
                Reference.parse(ref), manifest.digest, manifest.raw, manifest, plain
            )
            out: list[tuple[str, float]] = []
            for name, policy in variants:
                with Registry(policy=policy) as guarded:
                    guarded.pull(ref).close()  # warm
                    base, added = _added_ms(plain, guarded, ref)
                    if not out:
                        out.append(("pull, no policy (ms)", base))
                    out.append((f"+ {name}: pull (ms added)", added))
                    out.append((f"  {name}: evaluate (ms)", _evaluate_ms(policy, request)))
            return out


def main() -> int:
    for name, ms in rows():
        print(f"{name:<42}{ms:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
