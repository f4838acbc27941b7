"""Which JetStream errors make provisioning wait for a forming cluster, and which stop it.

A fresh three-node cluster first answers "JetStream not ready" (503) and, for a moment
after electing its meta leader, "no suitable peers for placement" (400, code 10005) to a
replicated stream; both must be waited out. Any other 400 is a real mistake in the
request and must reach the operator at once.
"""

from __future__ import annotations

from nats.errors import NoRespondersError
from nats.js.errors import BadRequestError, ServiceUnavailableError

from rollout_engine.engine.bus import NO_PEERS_FOR_PLACEMENT, cluster_still_forming


def test_no_peers_for_placement_is_waited_out() -> None:
    exc = BadRequestError(
        code=400, err_code=NO_PEERS_FOR_PLACEMENT, description="no suitable peers for placement"
    )
    assert cluster_still_forming(exc)


def test_jetstream_not_ready_and_no_responders_are_waited_out() -> None:
    assert cluster_still_forming(
        ServiceUnavailableError(code=503, description="JetStream system temporarily unavailable")
    )
    assert cluster_still_forming(NoRespondersError())
    assert cluster_still_forming(TimeoutError())


def test_another_bad_request_stops_provisioning() -> None:
    exc = BadRequestError(
        code=400,
        err_code=10058,
        description="stream name already in use with a different configuration",
    )
    assert not cluster_still_forming(exc)
