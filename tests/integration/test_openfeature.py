"""The OpenFeature provider with the real openfeature-sdk against a real stack: the same
sticky assignment as ``assign()``, DISABLED after a kill switch, decisions recorded by the
provider's hook, and a sensible reason when the server is down."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from openfeature import api as openfeature
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason
from openfeature.track import TrackingEventDetails

from rollout_engine.engine.api.service import ControlApi
from rollout_engine.engine.sdk.client import RolloutClient
from rollout_engine.engine.sdk.openfeature import RolloutProvider
from rollout_engine.engine.settings import load_settings
from rollout_engine.events import Decision, Outcome, subjects
from tests.integration.test_sdk import read_events

REPO = Path(__file__).resolve().parents[2]


async def _wait(predicate, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_provider_assigns_like_assign_records_decisions_and_obeys_the_kill_switch(stack, tmp_path) -> None:
    settings, nc, js = stack
    control = ControlApi(nc, js)
    await control.config({"rollout": "planner-v2", "actor": "test", "canary_pct": 50, "create": True})
    units = [f"user-{i}" for i in range(300)]
    async with RolloutClient(settings, producer="of", outbox_path=tmp_path / "of.sqlite") as client:
        provider = RolloutProvider(client)
        openfeature.set_provider(provider, domain="of-test")
        changed: list[EventDetails] = []
        flags = openfeature.get_client(domain="of-test")
        flags.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, changed.append)
        try:
            details = [flags.get_string_details("planner-v2", "baseline", EvaluationContext(targeting_key=u))
                       for u in units]
            assert [d.value for d in details] == [client.assign("planner-v2", u) for u in units]
            assert {d.value for d in details} == {"baseline", "candidate"}
            assert {d.reason for d in details} == {Reason.SPLIT}
            first = details[0].flag_metadata
            assert first["control_revision"] == client.control_seq("planner-v2") > 0
            assert first["config_version"] == client.state("planner-v2").config_version == 1
            assert first["canary_pct"] == 50.0 and first["stale"] is False
            served_candidate = flags.get_boolean_value("planner-v2", False, EvaluationContext(targeting_key=units[0]))
            assert served_candidate is (details[0].value == "candidate")

            outcome_attrs = {"flag": "planner-v2", "decision_id": first["decision_id"], "variant": details[0].value}
            flags.track("win", EvaluationContext(targeting_key=units[0]), TrackingEventDetails(0.9, outcome_attrs))

            await control.rollback({"rollout": "planner-v2", "actor": "test", "reason": "regression"})
            await _wait(lambda: client.state("planner-v2").kill_switch)
            killed = [flags.get_string_details("planner-v2", "candidate", EvaluationContext(targeting_key=u))
                      for u in units[:50]]
            assert {(d.value, d.reason) for d in killed} == {("baseline", Reason.DISABLED)}
            assert killed[0].flag_metadata["control_revision"] > first["control_revision"]
            assert killed[0].flag_metadata["kill_switch"] is True
            assert flags.get_boolean_value("planner-v2", True, EvaluationContext(targeting_key=units[0])) is False
            await _wait(lambda: any(e.flags_changed == ["planner-v2"] for e in changed))
            await client.flush()
        finally:
            openfeature.clear_providers()

    events, _ = await read_events(js, subjects.events_filter("planner-v2"))
    recorded = {e.id: e for e in events if isinstance(e, Decision)}
    for d in [*details, *killed]:  # every evaluation's decision, under the id its metadata gave
        decision = recorded[d.flag_metadata["decision_id"]]
        assert (decision.variant, decision.producer) == (d.value, "of")
    assert recorded[killed[0].flag_metadata["decision_id"]].reason == "kill_switch"
    outcomes = [e for e in events if isinstance(e, Outcome)]
    assert [(o.decision_id, o.verdict, o.quality) for o in outcomes] == [(first["decision_id"], "win", 0.9)]


async def test_provider_reasons_when_the_engine_is_unreachable_or_the_call_is_wrong(stack, fresh_server, tmp_path) -> None:
    settings, nc, js = stack
    await ControlApi(nc, js).config({"rollout": "planner-v3", "actor": "test", "canary_pct": 100, "create": True})
    ctx = EvaluationContext(targeting_key="user-1")
    async with RolloutClient(settings, producer="of", outbox_path=tmp_path / "a.sqlite") as client:
        openfeature.set_provider(RolloutProvider(client), domain="of-down")
        flags = openfeature.get_client(domain="of-down")
        try:
            assert flags.get_string_details("planner-v3", "baseline", ctx).reason == Reason.SPLIT
            wrong = {
                "no-unit": flags.get_string_details("planner-v3", "baseline", EvaluationContext()),
                "bad-key": flags.get_string_details("planner.v3", "baseline", ctx),
                "number": flags.get_integer_details("planner-v3", 7, ctx),
            }
            assert {k: (d.value, d.reason, d.error_code) for k, d in wrong.items()} == {
                "no-unit": ("baseline", Reason.ERROR, ErrorCode.TARGETING_KEY_MISSING),
                "bad-key": ("baseline", Reason.ERROR, ErrorCode.FLAG_NOT_FOUND),
                "number": (7, Reason.ERROR, ErrorCode.TYPE_MISMATCH),
            }
            await nc.close()
            fresh_server.stop()
            await _wait(lambda: not client.connected)
            down = flags.get_string_details("planner-v3", "baseline", ctx)
            # the cached state keeps serving, as assign() does, and says it may be out of date
            assert (down.value, down.reason, down.error_code) == ("candidate", Reason.STALE, None)
            assert down.flag_metadata["stale"] is True and "unreachable" in (down.error_message or "")
        finally:
            openfeature.clear_providers()

    offline = load_settings(env={}, nats_url="nats://127.0.0.1:1", data_dir=str(tmp_path / "off"))
    async with RolloutClient(offline, producer="of", outbox_path=tmp_path / "b.sqlite", allow_offline=True) as client:
        openfeature.set_provider(RolloutProvider(client), domain="of-never")
        try:
            never = openfeature.get_client(domain="of-never").get_string_details("planner-v3", "baseline", ctx)
        finally:
            openfeature.clear_providers()
    assert (never.value, never.reason, never.error_code) == ("baseline", Reason.ERROR, ErrorCode.PROVIDER_NOT_READY)


def test_slim_install_works_without_openfeature_and_the_provider_names_the_extra() -> None:
    script = (
        "import sys; sys.modules['openfeature'] = None\n"
        "import rollout_engine.engine.sdk as sdk; assert sdk.RolloutClient\n"
        "try:\n"
        "    import rollout_engine.engine.sdk.openfeature\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "pip install 'rollout-engine[openfeature]'" in result.stdout
