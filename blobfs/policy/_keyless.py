"""Keyless (Fulcio certificate + Rekor entry) signatures, verified offline with ``sigstore``.

:class:`KeylessPolicy` hands each signature bundle attached to the manifest to
``sigstore.verify.Verifier`` built on the user's trusted-root file (no TUF, no network): the
certificate chain to a Fulcio CA of that root at the time the transparency log recorded,
the embedded SCT against its CT logs, the Rekor inclusion proof, checkpoint and promise against
its Rekor keys, the signature over the exact raw manifest bytes, and the certificate's
identity against :class:`Identity` patterns (issuer exact, subject exact or a regular
expression over the SAN URIs, e-mails and sigstore other-names).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier

from ..errors import PolicyError
from ._bundle import BUNDLE_MEDIA_TYPE, BUNDLE_MEDIA_TYPES
from ._glob import glob_regex
from ._referrers import Evidence, first_accepted

if TYPE_CHECKING:
    from ..registry import PolicyRequest

__all__ = [
    "GITHUB_ACTIONS_ISSUER",
    "Identity",
    "KeylessPolicy",
    "github_actions_identity",
]

log = logging.getLogger(__name__)

GITHUB_ACTIONS_ISSUER = "https://token.actions.githubusercontent.com"
"""The OIDC issuer of GitHub Actions workload identities."""

_ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
"""Fulcio's original issuer extension: the raw issuer URL bytes."""
_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
"""Fulcio's issuer extension since 2022: a DER UTF8String."""
_OTHERNAME = ObjectIdentifier("1.3.6.1.4.1.57264.1.7")
"""Fulcio's SAN other-name for usernames."""


@dataclass(frozen=True, slots=True)
class Identity:
    """An accepted signer: the OIDC ``issuer`` (exact) and the certificate subject, either
    ``subject`` (exact: an e-mail, a URI) or ``subject_regex`` (a Python regular expression
    that must match a whole SAN). ValueError on construction for anything else."""

    issuer: str
    subject: str | None = None
    subject_regex: str | None = None
    _compiled: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.issuer:
            raise ValueError("an identity needs an issuer (the OIDC provider's URL)")
        if (self.subject is None) == (self.subject_regex is None):
            raise ValueError("an identity needs exactly one of subject and subject_regex")
        if self.subject_regex is not None:
            try:
                compiled = re.compile(self.subject_regex)
            except re.error as e:
                raise ValueError(f"subject_regex {self.subject_regex!r}: {e}") from None
            object.__setattr__(self, "_compiled", compiled)

    def matches(self, issuer: str | None, subjects: Sequence[str]) -> bool:
        if issuer != self.issuer:
            return False
        if self.subject is not None:
            return self.subject in subjects
        assert self._compiled is not None
        return any(self._compiled.fullmatch(s) for s in subjects)

    def __str__(self) -> str:
        subject = self.subject if self.subject is not None else f"/{self.subject_regex}/"
        return f"{subject} from {self.issuer}"


def _ref_patterns(branches: Sequence[str], tags: Sequence[str], refs: Sequence[str]) -> str:
    globs = [f"refs/heads/{b}" for b in branches] + [f"refs/tags/{t}" for t in tags] + list(refs)
    if not globs:
        return r"refs/.+"
    return "(?:" + "|".join(glob_regex(g).pattern for g in globs) + ")"


def github_actions_identity(
    repository: str,
    *,
    workflow: str | None = None,
    branches: Sequence[str] = (),
    tags: Sequence[str] = (),
    refs: Sequence[str] = (),
) -> Identity:
    """The identity of a GitHub Actions workflow of ``repository`` (``owner/repo``).

    The certificate SAN must be ``https://github.com/<repository>/.github/workflows/<file>@<ref>``
    with ``<file>`` matching the glob ``workflow`` (default: any file) and ``<ref>`` one of
    ``refs/heads/<branch glob>``, ``refs/tags/<tag glob>`` or the ``refs`` globs (none given:
    any ref). Globs: ``*`` does not cross ``/``.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", repository):
        raise ValueError(f"repository {repository!r}: want owner/name")
    wf = glob_regex(workflow).pattern if workflow else r"[^@/]+"
    regex = (
        rf"https://github\.com/{re.escape(repository)}/\.github/workflows/{wf}"
        rf"@{_ref_patterns(branches, tags, refs)}"
    )
    return Identity(GITHUB_ACTIONS_ISSUER, subject_regex=regex)


def certificate_identity(cert: x509.Certificate) -> tuple[str | None, list[str]]:
    """The OIDC issuer and the SAN values (URIs, e-mails, sigstore other-names) of ``cert``."""
    issuer: str | None = None
    for oid, v2 in ((_ISSUER_V2, True), (_ISSUER_V1, False)):
        try:
            raw = cert.extensions.get_extension_for_oid(oid).value
        except x509.ExtensionNotFound:
            continue
        value = getattr(raw, "value", b"")
        issuer = _der_utf8(value) if v2 else value.decode("utf-8", "replace")
        if issuer:
            break
    subjects: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return issuer, subjects
    subjects += san.get_values_for_type(x509.UniformResourceIdentifier)
    subjects += san.get_values_for_type(x509.RFC822Name)
    subjects += [
        o.value.decode("utf-8", "replace")
        for o in san.get_values_for_type(x509.OtherName)
        if o.type_id == _OTHERNAME
    ]
    return issuer, subjects


def _der_utf8(value: bytes) -> str | None:
    """The text of a DER UTF8String (tag 0x0C, short or long length), None if it is not one."""
    if len(value) < 2 or value[0] != 0x0C:
        return None
    n, i = value[1], 2
    if n & 0x80:
        count = n & 0x7F
        n = int.from_bytes(value[2 : 2 + count], "big")
        i = 2 + count
    body = value[i : i + n]
    return body.decode("utf-8", "replace") if len(body) == n else None


class _IdentityCheck:
    """A ``sigstore`` verification policy accepting any of ``identities``."""

    def __init__(self, identities: Sequence[Identity]) -> None:
        self._identities = tuple(identities)

    def verify(self, cert: x509.Certificate) -> None:
        from sigstore.errors import VerificationError

        issuer, subjects = certificate_identity(cert)
        if not any(i.matches(issuer, subjects) for i in self._identities):
            raise VerificationError(
                f"signer {', '.join(subjects) or '(no subject)'} from {issuer or '(no issuer)'} "
                "is not an accepted identity"
            )


class KeylessPolicy:
    """Accepts a manifest with a keyless sigstore bundle that verifies offline against the
    trusted root ``trusted_root`` (a sigstore ``trusted_root.json``: Fulcio CAs, Rekor and CT
    log keys) and whose certificate identity matches one of ``identities``.

    At least one identity is required (accepting any signer a public CA vouched for would
    trust anyone). An unreadable or malformed trusted root raises :class:`PolicyError` naming
    the file at construction. Key-pair bundles among the referrers are skipped (with a reason).
    """

    name = "keyless"

    def __init__(
        self, trusted_root: str | os.PathLike[str], identities: Sequence[Identity]
    ) -> None:
        from sigstore.errors import Error as SigstoreError
        from sigstore.models import TrustedRoot
        from sigstore.verify import Verifier

        if not identities:
            raise ValueError("KeylessPolicy needs at least one identity to accept")
        for i in identities:
            if not isinstance(i, Identity):
                raise TypeError(f"not an Identity: {i!r}")
        self.identities = tuple(identities)
        self.trusted_root = os.fspath(trusted_root)
        where = self.trusted_root
        try:
            root = TrustedRoot.from_file(where)
            root.get_fulcio_certs()
            self._verifier = Verifier(trusted_root=root)
        except OSError as e:
            raise PolicyError(f"{where}: cannot read the trusted root: {e.strerror or e}") from None
        except (ValueError, SigstoreError) as e:
            text = " ".join(str(e).split())[:300]
            raise PolicyError(f"{where}: not a usable sigstore trusted root: {text}") from None
        self._check = _IdentityCheck(self.identities)

    def evaluate(self, request: PolicyRequest) -> None:
        from sigstore.errors import Error as SigstoreError
        from sigstore.models import Bundle

        def check(ev: Evidence, where: str) -> str | None:
            try:
                bundle = Bundle.from_json(ev.data)
                self._verifier.verify_artifact(request.manifest_bytes, bundle, self._check)
            except (SigstoreError, ValueError) as e:
                return f"{where}: {_short(e)}"
            return None

        first_accepted(
            request,
            self.name,
            BUNDLE_MEDIA_TYPE,
            BUNDLE_MEDIA_TYPES,
            check,
            noun="bundle",
            none_attached="no signature is attached to",
            refused="no valid keyless signature",
        )

    def __repr__(self) -> str:
        ids = ", ".join(str(i) for i in self.identities)
        return f"KeylessPolicy({self.trusted_root!r}, [{ids}])"


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] + ("…" if len(text) > 300 else "")
