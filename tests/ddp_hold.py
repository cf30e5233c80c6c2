"""A Lightning callback for tests/test_ddp.py: with SAEEXP_TEST_HOLD=DIR set, every rank stops after optimiser
step `step`, writes DIR/rank<r> holding its pid, and waits there (for the kill the test sends); inert without it.
It never holds a rank whose parent rank died meanwhile (a rank waiting here is in no collective to fail)."""
from __future__ import annotations

import os
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class HoldAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        where = os.environ.get("SAEEXP_TEST_HOLD")
        if not where or trainer.global_step != self.step:
            return
        Path(where, f"rank{trainer.global_rank}").write_text(str(os.getpid()))
        parent = os.getppid()
        t0 = time.monotonic()
        while os.getppid() == parent and time.monotonic() - t0 < 300:
            time.sleep(0.1)
        os._exit(3)  # released without the expected kill: fail loudly
