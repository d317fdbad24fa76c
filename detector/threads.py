"""Work run ahead on a thread: a producer fills a bounded queue, the caller's loop takes from it,
and an exception on the producer is raised again on the caller's thread. Used by training (images
decoded ahead of the step) and inference (the model a few batches ahead of the storing)."""

from __future__ import annotations

import queue
import threading


class _End:
    """End of a producer thread's output, carrying its exception if it failed."""

    def __init__(self, error: BaseException | None = None):
        self.error = error


def run_ahead(iterable, depth: int = 2, prepare=None, name: str = "loupe-prefetch",
              join_timeout: float | None = 10):
    """Yield ``iterable``'s items while a thread prepares the next ones.

    Decoding images and masks (Pillow and pycocotools release the GIL for the heavy part)
    overlaps the model's step instead of adding to it. A thread, not DataLoader worker
    processes: it is safe to start from any process (a GUI, pytest) and costs no copies.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def fill() -> None:
        try:
            for item in iterable:
                if not put(prepare(item) if prepare is not None else item):
                    return
            put(_End())
        except BaseException as exc:  # re-raised on the training thread
            put(_End(exc))

    thread = threading.Thread(target=fill, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=join_timeout)
