"""Runs that start together share one MLflow store safely."""
import multiprocessing as mp


def _ensure(args):
    uri, barrier = args
    import mlflow.tracking  # noqa: F401  (imported before the barrier, so the calls meet)

    from saeexp.tracking.store import ensure_experiment

    barrier.wait(timeout=120)  # all at once, as two `saeexp` started side by side on a fresh runs folder
    try:
        return "ok", ensure_experiment(uri, "together")
    except Exception as e:  # noqa: BLE001 - the failure is the finding
        return "error", f"{type(e).__name__}: {e}"[:300]


def test_runs_started_together_on_a_new_sqlite_store_all_get_the_experiment(tmp_path):
    # without the lock 3 of 4 failed in MLflow's first-use schema migration ("Online migration expected to
    # match one row", "duplicate column name: step"): the quality bench's two side-by-side runs lost one that way
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(4)
        with ctx.Pool(4) as pool:
            results = pool.map(_ensure, [(uri, barrier)] * 4, chunksize=1)
    assert [r[0] for r in results] == ["ok"] * 4, results
    assert len({r[1] for r in results}) == 1, results
