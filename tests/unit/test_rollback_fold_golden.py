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

# seed -> (rollback digest, canary_stats digest, commands digest, views digest), 6,000 events each
RECORDED = {
    0: ('f293cf08b4c696a402c9eab8d0a2a972', 'e87f14cd067c0bc7ca7d1eade2f7aa09', 'd64715ea7debb295d682b3ae0dc775dd', 'ace8d5d0905d23f1f9d3d970a006b102'),
    1: ('2a83c56b32a93c4b8d0c2ca66d9ae134', 'cbaf8651af4e0742ad138d4e2e17bfae', '891503896d9594faff0c963041e7ad8f', '99288bcb0670290e98646d509c6ca094'),
    2: ('7eab5184f68a18055af3514973106ba7', 'ea629f96ffeee8de20a97958fcd2e980', 'b0b89f49ee1b1af5b599efd9d727c948', '253f42fd9c939ab81f44f07f3e4d6f58'),
    3: ('d662dcd1c2f4195bb28af6d21d372442', '5975950dd7fb63b171f27ec4615d080f', '2c7ec0f5a5c7c6c5a8de98e03105cbe9', 'f3ff430a9fec7aa85203c25fc165e081'),
    4: ('6066a27069ad78fd9e827b450f952b9b', 'e8bcb4e244adbb607fb9c347964b5dbe', '9f237ba00b378f48bedb92608b21f4bd', 'f54cff678a0680257cb9cfff1e33f5db'),
    5: ('200584017d62b33bf30834ed71d0b8ff', '2e7494084fc955dbaf669e43f005a2ed', 'fa01b3da18945607e160781f80c460d2', '83ad6ce8eed2ac2c57f86c6ae9be448f'),
    6: ('f7a3f8bb1150685be798dc9a10f369ad', 'a9f703532c9e07620551c8c68f38099d', '69652a4d3b34fd94dda66d906b27f970', 'e22eb65f466a6c518aaf9a532bda71e7'),
    7: ('afed1dd90c9eeab466da27b973361ade', '7390555611541bad7440b076a0fcabc8', '114aab0bda25bf1c8966da2871ef7793', '1ccea684068e6d48fb7da1483f56d5fe'),
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
