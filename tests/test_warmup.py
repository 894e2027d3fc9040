"""demo.warmup's heap freeze: start-up objects leave the garbage collector's scans, so full
collections stop pausing slider moves (benchmarks/README.md, "App")."""

import gc

from demo import ui, warmup


def test_freeze_heap_moves_live_objects_to_the_permanent_generation():
    gc.unfreeze()
    try:
        keep = [object() for _ in range(1000)]  # noqa: F841  (alive while frozen)
        warmup.freeze_heap()
        assert gc.get_freeze_count() >= 1000
    finally:
        gc.unfreeze()  # leave the test process as it was


def test_warm_up_and_launch_freeze_the_heap_before_serving(monkeypatch):
    calls = []
    monkeypatch.setattr(warmup, "freeze_heap", lambda: calls.append("freeze"))
    monkeypatch.setattr(warmup, "start", lambda models=(): calls.append("warm-up thread"))
    warmup.warm_up(parts=())
    assert calls == ["freeze"]

    class FakeBlocks:
        def launch(self, **options):
            calls.append("launch")

    ui.launch(FakeBlocks(), quiet=True)
    assert calls == ["freeze", "warm-up thread", "freeze", "launch"]
