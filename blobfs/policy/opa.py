"""Rego policies (OPA's language) evaluated in process with regopy: :class:`OPAPolicy`.

::

    OPAPolicy(Path("policy.rego"), public_keys=["builder.pub"])

``data.blob.policy`` is queried with ``input.manifest`` (reference, digest, mediaType,
annotations) and ``input.attestations`` (in-toto statements about this manifest whose DSSE
signature verified with ``public_keys``): a non-empty ``deny`` set refuses with its messages,
``allow == true`` accepts, anything else refuses.
"""

from __future__ import annotations

from ._opa import QUERY as QUERY
from ._opa import OPAPolicy as OPAPolicy

__all__ = ["QUERY", "OPAPolicy"]
