"""Trust commands: ``keygen``, ``sign``, ``attest``, ``verify --policy/--key``, and the
signature/attestation listing of ``inspect REF``.

* ``keygen [PREFIX]``: an ECDSA P-256 key pair, ``PREFIX.key`` (PKCS#8 PEM, mode 0600, encrypted
  with the password from ``--password-stdin``, ``$BLOBFS_KEY_PASSWORD`` or, on a terminal, a
  prompt; empty = unencrypted) and ``PREFIX.pub``; existing files are never overwritten.
* ``sign REF --key KEY``: sign the exact raw manifest bytes, attach the sigstore bundle (v0.3)
  as a referrer of the manifest digest. Without ``--key`` (keyless): a clear refusal.
* ``attest REF --predicate FILE --key KEY``: attach an in-toto statement (subject = the manifest
  digest, SLSA provenance v1 unless ``--predicate-type`` or the file says otherwise) in a DSSE
  envelope signed with KEY.
* ``verify REF --policy FILE`` / ``--key PUB``: evaluate the policy file (and/or require a
  signature by PUB) against REF's manifest; exit 5 with the reasons on a violation (as
  blob-cli). Without those options ``verify`` checks content, as before.

Passwords of encrypted keys come from ``--password-stdin`` or ``$BLOBFS_KEY_PASSWORD``
(``$BLOB_KEY_PASSWORD``, blob-cli's name, is read too), never from the command line.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ..errors import PolicyViolation, RegistryError
from ..policy._provenance import SLSA_PROVENANCE_V1
from ._common import (
    Ctx,
    add_policy_options,
    make_client,
    parse_reference,
    reference_arg,
    usage_error,
)
from ._output import CliError

if TYPE_CHECKING:
    from ..policy import Policy
    from ..registry import Descriptor, Reference, Registry

# The signing and policy code (cryptography, sigstore bundles, in-toto) is imported by the
# commands that use it: ``blobfs --help`` registers these commands without loading it.

__all__ = [
    "EXIT_POLICY",
    "add_trust_commands",
    "add_verify_options",
    "cmd_verify_any",
    "policy_of",
    "referrer_lines",
    "referrer_listing",
]

log = logging.getLogger("blobfs.cli")

EXIT_POLICY: Final = 5
"""Exit status of a policy violation (blob-cli's ``verify`` uses 5 too)."""

PASSWORD_ENV: Final = ("BLOBFS_KEY_PASSWORD", "BLOB_KEY_PASSWORD")

Add = Callable[..., argparse.ArgumentParser]


def _password(args: argparse.Namespace, *, confirm: bool) -> str | None:
    """The key password: stdin's first line with ``--password-stdin``, else the environment,
    else (on a terminal, ``confirm`` for a new key) a prompt; None for no password."""
    if getattr(args, "password_stdin", False):
        line = sys.stdin.readline().rstrip("\r\n")
        return line or None
    for name in PASSWORD_ENV:
        value = os.environ.get(name)
        if value:
            return value
    if not confirm or not sys.stdin.isatty():
        return None
    first = getpass.getpass("Password for the private key (empty: none): ")
    if first and getpass.getpass("Again: ") != first:
        raise CliError("the passwords differ")
    return first or None


def cmd_keygen(args: argparse.Namespace, ctx: Ctx) -> int:
    from ..policy.sigstore import write_keypair

    prefix = Path(args.prefix)
    password = _password(args, confirm=True)
    try:
        key, pub = write_keypair(prefix, password)
    except FileExistsError as e:
        raise CliError(f"{e.filename}: exists; refusing to overwrite a key file") from None
    out = ctx.out
    if out.json:
        out.emit_json(
            {"private_key": str(key), "public_key": str(pub), "encrypted": password is not None}
        )
        return 0
    out.line(f"Private key: {key} (mode 0600{', encrypted' if password else ''})")
    out.line(f"Public key:  {pub}")
    if password is None:
        out.warn(f"{key} is not encrypted: keep it secret (set BLOBFS_KEY_PASSWORD to encrypt)")
    return 0


def _private_key(args: argparse.Namespace) -> Any:
    from ..policy.sigstore import KEYLESS_SIGNING_UNSUPPORTED, load_private_key

    if not args.key:
        raise CliError(KEYLESS_SIGNING_UNSUPPORTED)
    return load_private_key(args.key, _password(args, confirm=False))


def _signed_result(ctx: Ctx, ref: Reference, what: str, subject: str, referrer: str) -> int:
    out = ctx.out
    if out.json:
        out.emit_json(
            {
                "ref": str(ref),
                "resolved_ref": f"{ref.registry}/{ref.repository}@{subject}",
                "digest": subject,
                f"{what}_digest": referrer,
                "status": "signed" if what == "signature" else "attested",
            }
        )
        return 0
    out.line(f"{'Signed' if what == 'signature' else 'Attested'} {ref}")
    out.info(f"Digest:      {subject}")
    out.info(f"{what.capitalize() + ':':<13}{referrer}")
    return 0


def cmd_sign(args: argparse.Namespace, ctx: Ctx) -> int:
    from ..policy.sigstore import sign_manifest

    ref = parse_reference(args.ref)
    key = _private_key(args)
    with make_client(ctx, caches=False) as client:
        signed = sign_manifest(client.registry, ref, key)
    return _signed_result(ctx, ref, "signature", signed.subject, signed.referrer)


def cmd_attest(args: argparse.Namespace, ctx: Ctx) -> int:
    from ..policy.slsa import attest, load_predicate

    ref = parse_reference(args.ref)
    ptype, predicate = load_predicate(args.predicate)
    predicate_type = args.predicate_type or ptype or SLSA_PROVENANCE_V1
    key = _private_key(args)
    with make_client(ctx, caches=False) as client:
        signed = attest(client.registry, ref, predicate, key, predicate_type=predicate_type)
    return _signed_result(ctx, ref, "attestation", signed.subject, signed.referrer)


def policy_of(args: argparse.Namespace) -> tuple[Policy, list[str]]:
    """The policy of ``--policy FILE`` and ``--key PUB`` options (all required) and their
    names, as ``verify`` and ``pull`` take them (at least one given)."""
    from ..policy import load_policy, require_all
    from ..policy.sigstore import KeyPairPolicy

    parts: list[Policy] = []
    names: list[str] = []
    for path in args.policy:
        parts.append(load_policy(path))
        names.append(path)
    for pub in args.verify_key:
        parts.append(KeyPairPolicy(pub))
        names.append(f"key {pub}")
    return (parts[0] if len(parts) == 1 else require_all(*parts)), names


def cmd_verify_any(args: argparse.Namespace, ctx: Ctx) -> int:
    """``verify``: with ``--policy``/``--key`` the trust check of a REF, else the content
    check of :func:`~blobfs.cli._archive_cmds.cmd_verify`."""
    from ..policy import policy_name
    from ..registry import PolicyRequest
    from ._archive_cmds import cmd_verify

    if not args.policy and not args.verify_key:
        return cmd_verify(args, ctx)
    positionals: list[str] = args.positionals
    if args.index is not None or len(positionals) != 1:
        usage_error(args, "verify --policy/--key takes one registry reference REF")
    ref = reference_arg(positionals[0])
    if ref is None:
        usage_error(args, f"{positionals[0]}: --policy/--key verify a registry reference")
    policy, names = policy_of(args)
    out = ctx.out
    with make_client(ctx) as client:
        manifest = client.registry.fetch(ref)
        request = PolicyRequest(ref, manifest.digest, manifest.raw, manifest, client.registry)
        doc: dict[str, Any] = {
            "ref": str(ref),
            "resolved_ref": f"{ref.registry}/{ref.repository}@{manifest.digest}",
            "digest": manifest.digest,
            "policies_applied": names,
        }
        try:
            policy.evaluate(request)
        except PolicyViolation as e:
            if out.json:
                out.emit_json(
                    {
                        **doc,
                        "verified": False,
                        "status": "violation",
                        "policy": e.policy,
                        "reason": e.reason,
                    }
                )
            raise CliError(str(e), EXIT_POLICY) from None
    if out.json:
        out.emit_json({**doc, "verified": True, "status": "verified"})
        return 0
    out.line(f"Verified {ref}")
    out.info(f"Digest:   {manifest.digest}")
    out.info(f"Policies: {', '.join(names)} ({policy_name(policy)})")
    return 0


def referrer_listing(registry: Registry, ref: Reference) -> dict[str, Any]:
    """``signatures`` and ``attestations`` attached to ``ref`` (pinned to its digest): the
    referrer descriptors (digest, created, predicate type), listed not verified; on a registry
    error the two lists are None and ``referrers_error`` says why."""
    from ..policy.sigstore import SIGNATURE_ARTIFACT_TYPE
    from ..policy.slsa import ATTESTATION_ARTIFACT_TYPE

    out: dict[str, Any] = {}
    try:
        for key, kind in (
            ("signatures", SIGNATURE_ARTIFACT_TYPE),
            ("attestations", ATTESTATION_ARTIFACT_TYPE),
        ):
            out[key] = [_describe(d) for d in registry.referrers(ref, kind)]
    except RegistryError as e:
        return {"signatures": None, "attestations": None, "referrers_error": str(e)}
    return out


def _describe(d: Descriptor) -> dict[str, Any]:
    item: dict[str, Any] = {"digest": d.digest, "artifact_type": d.artifact_type}
    created = d.annotations.get("org.opencontainers.image.created")
    if created:
        item["created"] = created
    ptype = d.annotations.get("in-toto.io/predicate-type")
    if ptype:
        item["predicate_type"] = ptype
    return item


def referrer_lines(listing: dict[str, Any]) -> list[str]:
    """The text lines of :func:`referrer_listing` for ``inspect``."""
    if listing.get("referrers_error"):
        return [f"Signatures:  unavailable ({listing['referrers_error']})"]
    lines: list[str] = []
    for key in ("signatures", "attestations"):
        items: list[dict[str, Any]] = listing[key]
        lines.append(
            f"{key.capitalize() + ':':<13}{len(items)}" + (" (not verified)" if items else "")
        )
        for it in items:
            extra = " ".join(str(it[k]) for k in ("predicate_type", "created") if k in it)
            lines.append(f"  {it['digest']}" + (f"  {extra}" if extra else ""))
    return lines


def add_verify_options(p: argparse.ArgumentParser) -> None:
    """``--policy FILE`` and ``--key PUB`` of ``verify``."""
    add_policy_options(
        p,
        policy_help="verify REF against the trust policy FILE (TOML or YAML; repeatable); "
        "exit 5 when it is refused",
        key_help="require a signature of REF by public key PUB (repeatable: all required)",
    )


def _key_options(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument(
        "--key",
        metavar="KEY",
        required=required,
        help="the private key (PEM) to sign with"
        + ("" if required else "; without it: keyless, which blobfs does not offer"),
    )
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the key password from stdin's first line (else $BLOBFS_KEY_PASSWORD)",
    )


def add_trust_commands(add: Add) -> None:
    """Register ``keygen``, ``sign`` and ``attest`` with ``build_parser``'s ``add``."""
    ref_help = "host[:port]/repo[:tag][@sha256:...] (no tag: latest)"
    p = add(
        "keygen",
        cmd_keygen,
        "generate an ECDSA P-256 key pair PREFIX.key (mode 0600) + PREFIX.pub for sign/attest",
        "[--password-stdin] [PREFIX]",
        archive=False,
    )
    p.add_argument("prefix", metavar="PREFIX", nargs="?", default="blobfs", help="default: blobfs")
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="encrypt the private key with stdin's first line (else $BLOBFS_KEY_PASSWORD, "
        "else a prompt on a terminal)",
    )
    p = add(
        "sign",
        cmd_sign,
        "sign REF's manifest with a private key; the sigstore bundle is attached as a referrer",
        "--key KEY [--password-stdin] REF",
        archive=False,
    )
    p.add_argument("ref", metavar="REF", help=ref_help)
    _key_options(p, required=False)
    p = add(
        "attest",
        cmd_attest,
        "attach a signed in-toto statement (SLSA provenance) about REF's manifest",
        "--predicate FILE --key KEY [--predicate-type URI] REF",
        archive=False,
    )
    p.add_argument("ref", metavar="REF", help=ref_help)
    p.add_argument(
        "--predicate",
        required=True,
        metavar="FILE",
        help="JSON predicate (or a whole in-toto statement whose predicate is taken)",
    )
    p.add_argument(
        "--predicate-type",
        metavar="URI",
        default=None,
        help=f"predicate type (default {SLSA_PROVENANCE_V1})",
    )
    _key_options(p, required=False)
