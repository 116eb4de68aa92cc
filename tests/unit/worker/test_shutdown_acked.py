"""A warm shutdown never loses a job whose early ack already went out while it waited."""

from __future__ import annotations

from typing import Any

from celeriac.testing import dispose_test_app, make_test_app
from tests.waiting import wait_for

from .support import HoldingPool, fetch_one, publish, running_consumer, task_message


class _RefusingOnce(HoldingPool):
    """Refuses the first hand-over (as when a prefork child dies), then holds jobs."""

    def __init__(self) -> None:
        super().__init__(limit=1)
        self.refused = 0

    def submit(self, job_id: int, message: Any, delivery_info: dict[str, Any]) -> bool:  # type: ignore[override]
        if not self.refused:
            self.refused += 1
            return False
        return super().submit(job_id, message, delivery_info)


def test_an_early_acked_job_back_in_the_buffer_still_runs_after_stop() -> None:
    app = make_test_app("shutdown-acked")

    @app.task(name="shutdown.early", acks_late=False)
    def early() -> str:
        return "ran"

    pool = _RefusingOnce()
    try:
        with running_consumer(app, pool) as consumer:
            publish(app, task_message("shutdown.early"))
            consumer.receive([fetch_one(app)])
            wait_for(lambda: pool.refused >= 1, 5, message="the pool was never asked")
            consumer.stop_consuming()
            # It cannot go back to the broker (acked): it must be handed to the pool instead.
            wait_for(lambda: len(pool.held) == 1, 5,
                     message="the early-acked job was dropped at shutdown")
    finally:
        dispose_test_app(app)
