"""The rollback and canary-stats folds give the same snapshots, commands and views as
before the incremental windows (consumers/windows.py): recorded from the code before the
change on the deterministic logs of fold_workloads.py, asserted equal after it.

A change here is a change of behaviour: if it is on purpose, record the new digests and
say why in bench/NOTES.md."""

from __future__ import annotations

import hashlib

import pytest

from rollout_engine.consumers.canary_stats import WINDOWS, CanaryStats
from rollout_engine.consumers.rollback.projection import RollbackProjection
from rollout_engine.events import encode
from tests.unit.fold_workloads import log

# Recorded from the code before the incremental windows, once kills carried their evidence
# (stream sequences kept per sample, KillEvidence in each KillSwitch): both changed the
# rollback snapshot and the commands, the incremental windows changed neither. The
# rollback digests were recorded again when its fold stopped sketching every sample for
# policies that read no sketch (its snapshot lost those sketches and its shapes gained a
# flag); the commands and views did not change (tests/unit/test_evidence_sketch.py).
# seed -> (rollback digest, canary_stats digest, commands digest, views digest), 6,000 events each
RECORDED = {
    0: ('a6e11fc43a9ead52eba55499cd1e2009', 'f4d6723a5411a875a52b2760009b9613', '2d7300f75e7de91842190aa55d730bea', 'ace8d5d0905d23f1f9d3d970a006b102'),
    1: ('ac6699a476ad2ce543199c0cf0caa465', '4cb814096b8cc0679a518fb52788a0b2', '58121410a037411251487565871fcc5a', '99288bcb0670290e98646d509c6ca094'),
    2: ('86a78e09c1cef83a720ecc08fb0c034d', '2b88e987d8c0c191b81d2dd2eb50743c', '8180cef1da1237fa22cf3f6ea5e7cb04', '253f42fd9c939ab81f44f07f3e4d6f58'),
    3: ('a9c81bd79334e04cb90ba1b220b40c00', '98a305907825fc9d74873f1670f96aee', 'e07bc18f0635d500fa278ed8596588ce', 'f3ff430a9fec7aa85203c25fc165e081'),
    4: ('b495a1624e899a6f2e5cb42c0b68c0e2', '9c7f64d4a59f7b8376ee56b687ed4c90', 'a73d873046f7a950f80f354b37e3fd50', 'f54cff678a0680257cb9cfff1e33f5db'),
    5: ('8a52d2014b3948c71b8f5b65bd0ead5c', '4af4556275f5d5a949b604126a597058', 'bbe0721fce5657733d54b1240c6245fc', '83ad6ce8eed2ac2c57f86c6ae9be448f'),
    6: ('d599ac6eea4667471be9a78134071e6f', '33180c15e5505cd1f3a26cb70d44f1d8', 'f955c61bd48066ddf769cdaba61a3cd2', 'e22eb65f466a6c518aaf9a532bda71e7'),
    7: ('72f236b668fcb6ef4c2317abc56c383c', '786007b47d51ff954ab083edefffe293', '46a283e718afff89136bfc4df8a1b8bc', '1ccea684068e6d48fb7da1483f56d5fe'),
}


def _fold(seed: int) -> tuple[str, str, str, str]:
    rollback, stats = RollbackProjection(), CanaryStats(last_n=50, window_ms=2_000, time_cap=200)
    commands = hashlib.blake2b(digest_size=16)
    views = hashlib.blake2b(digest_size=16)
    for seq, event in enumerate(log(seed, 6_000), 1):
        stats.apply(event, seq)
        for command in rollback.apply(event, seq):
            commands.update(encode(command))
            rollback.apply(command, seq)
        if seq % 500 == 0:
            for rollout in sorted(stats.rollouts):
                for window in WINDOWS:
                    views.update(repr(stats.view(rollout, window)).encode())
                    views.update(repr(rollback.status(rollout)).encode())
    return rollback.digest(), stats.digest(), commands.hexdigest(), views.hexdigest()


@pytest.mark.parametrize("seed", sorted(RECORDED))
def test_fold_matches_the_recorded_snapshots_commands_and_views(seed: int) -> None:
    assert _fold(seed) == RECORDED[seed]
