"""Which node certificates the CertificateExpiring alert judges: the newest expiry known,
from the credential (kept across restarts) or from what the controller has seen since."""

from __future__ import annotations

from controller.alerts import CertFacts
from controller.cert_watch import CertificateWatch
from controller.records import NodeCredential


def test_a_nodes_certificate_is_judged_by_its_newest_known_expiry() -> None:
    watch = CertificateWatch(None)  # a controller just restarted: nothing seen yet
    credentials = {
        "gw-1": NodeCredential("gw-1", 0, 1.0, "t1", expires_at=500.0),
        "gw-2": NodeCredential("gw-2", 0, 1.0, "t2"),  # issued before schema 7: unknown
        "gw-3": NodeCredential("gw-3", 1, 1.0, "t3", revoked=True, expires_at=900.0),
    }
    assert watch.facts(credentials) == (CertFacts("node gw-1 certificate", 500.0),)
    watch.node_seen("gw-2", 700.0)  # it connected with one
    watch.node_seen("gw-1", 400.0)  # an older one than the credential's: not the newest
    assert watch.facts(credentials) == (
        CertFacts("node gw-1 certificate", 500.0),
        CertFacts("node gw-2 certificate", 700.0),
    )
