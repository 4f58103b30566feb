"""The newcomer demo's six stories end the way their titles say, on the real workflow."""

from __future__ import annotations

from datetime import timedelta

from dunning import demo
from dunning.enums import Stage
from tests.support import ROOT


async def test_every_demo_story_ends_as_told(time_env, harness_factory, tmp_path):
    harness = harness_factory(time_env.client, tmp_path, (ROOT / "policies" / "demo.yaml").read_text())
    now = await time_env.get_current_time()
    async with harness.worker():
        running = await demo.start(
            time_env.client, harness.gateway, harness.policy_version, task_queue=harness.task_queue, now=now
        )
        for _ in range(100):  # 4 s of journey time per poll; the demo policy ends at 240 s
            if not await demo.step(running, harness.gateway, await time_env.get_current_time()):
                break
            await time_env.sleep(timedelta(seconds=4))
        else:
            raise AssertionError("the demo journeys did not all end")
    outcome = {item.story.key: item.status for item in running}
    assert {key: status.stage for key, status in outcome.items()} == {
        "funds": Stage.recovered,
        "backup": Stage.recovered,
        "update": Stage.recovered,
        "oob": Stage.recovered,
        "mac": Stage.handed_off,
        "handoff": Stage.handed_off,
    }
    assert outcome["backup"].attempts[-1].payment_method_id.startswith("pm_backup")
    assert outcome["update"].attempts[-1].payment_method_id.startswith("pm_new")
    assert "paid out of band" in outcome["oob"].end_reason
    assert not [a for a in outcome["mac"].attempts if a.number > 0], "MAC 02's 72 h wait outlasts the demo"
    assert len([a for a in outcome["handoff"].attempts if a.number > 0]) == 8
    for key in ("funds", "backup", "update"):
        retries = [a for a in outcome[key].attempts if a.number > 0]
        assert harness.gateway.count_charges(outcome[key].journey_id) == len(retries)
