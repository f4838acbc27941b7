"""Acknowledgements under least privilege, on the secure server of test_security.py.

An ``app`` credential reports acknowledgements and nothing more (no control command, no
write to ro_state); a ``producer`` cannot report; the ``operator`` reads them (status,
wait --applied) and cannot write them; a report whose body names another instance than
its key is refused by the reader.
"""

from __future__ import annotations

import nats
import pytest

from rollout_engine.engine.api.propagation import read_acks
from rollout_engine.engine.sdk.client import RolloutClient
from rollout_engine.engine.settings import load_settings
from rollout_engine.events import subjects
from rollout_engine.events.acks import InstanceAck, encode_ack
from tests.integration.test_propagation import until
from tests.integration.test_security import Secure, secure, secure_server  # noqa: F401  (fixtures)


async def test_app_reports_acknowledgements_and_nothing_else(secure: Secure, tmp_path, rollout_id: str) -> None:  # noqa: F811
    settings = load_settings(env={}, nats_url=secure.server.url, user="app", password=secure.passwords["app"],
                             secure=True, data_dir=str(tmp_path))
    operator = await secure.client("operator")
    producer = await secure.client("producer")
    app = await secure.client("app")
    try:
        async with RolloutClient(settings, producer="checkout") as client:
            await client.flush()
            mine = client._acks.instance

            async def my_report() -> bool:
                # The first report is published by the reporter's own task after start,
                # not by flush(): wait for it (seen to lag on a busy CI host).
                seen = {(e.service, e.instance): e for e in await read_acks(operator.jetstream())}
                return ("checkout", mine) in seen and seen[("checkout", mine)].ack is not None

            await until(my_report, "the app's first acknowledgement report", timeout=15.0)

            ajs = app.jetstream()
            kill = subjects.control(rollout_id, "kill_switch")
            with pytest.raises(nats.errors.TimeoutError):
                await ajs.publish(kill, b"forged", timeout=0.5)
            await secure.violation("app", f'publish to "{kill}"')
            state_key = f"$KV.{subjects.STATE_BUCKET}.control.{rollout_id}"
            with pytest.raises(nats.errors.TimeoutError):
                await ajs.publish(state_key, b"forged", timeout=0.5)
            await secure.violation("app", f'publish to "{state_key}"')

            forged = subjects.ack_subject("checkout", "forged-1")
            with pytest.raises(nats.errors.TimeoutError):
                await producer.jetstream().publish(forged, b"x", timeout=0.5)
            await secure.violation("producer", f'publish to "{forged}"')
            with pytest.raises(nats.errors.TimeoutError):
                await operator.jetstream().publish(forged, b"x", timeout=0.5)
            await secure.violation("operator", f'publish to "{forged}"')

            # The documented residual risk: an app may write any instance's entry. The key
            # is authoritative, so a body claiming another identity is refused by readers.
            liar = InstanceAck(service="search", instance="pod-9", ttl_ms=60_000)
            await ajs.publish(forged, encode_ack(liar))
            entries = {(e.service, e.instance): e for e in await read_acks(operator.jetstream())}
            assert entries[("checkout", "forged-1")].ack is None
            assert "authoritative" in entries[("checkout", "forged-1")].error
        gone = {(e.service, e.instance) for e in await read_acks(operator.jetstream())}
        assert ("checkout", mine) not in gone, "a closed client purges its entry"
    finally:
        for nc in (operator, producer, app):
            await nc.close()
