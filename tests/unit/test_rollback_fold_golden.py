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
# flag), and again when it kept the metric and quality series alone (no split, verdicts
# or shadow diffs, which no guard reads); the commands and views did not change
# (tests/unit/test_evidence_sketch.py).
# seed -> (rollback digest, canary_stats digest, commands digest, views digest), 6,000 events each
RECORDED = {
    0: ('264874f1657de46d12168c5b8186ee10', 'f4d6723a5411a875a52b2760009b9613', '2d7300f75e7de91842190aa55d730bea', 'ace8d5d0905d23f1f9d3d970a006b102'),
    1: ('0fdf47c1c92f1667d3feb44b39136d2a', '4cb814096b8cc0679a518fb52788a0b2', '58121410a037411251487565871fcc5a', '99288bcb0670290e98646d509c6ca094'),
    2: ('7451663d6a56144be8d5e51c7585bda9', '2b88e987d8c0c191b81d2dd2eb50743c', '8180cef1da1237fa22cf3f6ea5e7cb04', '253f42fd9c939ab81f44f07f3e4d6f58'),
    3: ('4d0854c8febbff84e364946399dd64ce', '98a305907825fc9d74873f1670f96aee', 'e07bc18f0635d500fa278ed8596588ce', 'f3ff430a9fec7aa85203c25fc165e081'),
    4: ('904e4e3c0f13a712f09fa0ca0962cc5d', '9c7f64d4a59f7b8376ee56b687ed4c90', 'a73d873046f7a950f80f354b37e3fd50', 'f54cff678a0680257cb9cfff1e33f5db'),
    5: ('2fc35f03b7e489d296b4352eb4e2b9d6', '4af4556275f5d5a949b604126a597058', 'bbe0721fce5657733d54b1240c6245fc', '83ad6ce8eed2ac2c57f86c6ae9be448f'),
    6: ('e6db01fbdae74799eff1bd3777e3296f', '33180c15e5505cd1f3a26cb70d44f1d8', 'f955c61bd48066ddf769cdaba61a3cd2', 'e22eb65f466a6c518aaf9a532bda71e7'),
    7: ('b5a93afb5d90597cf273b89b7e41b710', '786007b47d51ff954ab083edefffe293', '46a283e718afff89136bfc4df8a1b8bc', '1ccea684068e6d48fb7da1483f56d5fe'),
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
