"""One-click fine-tuning runs in a child process: `loupe train --json-events`, watched here.

The child process is the same code path as the command line; it isolates crashes and the GIL, so
the GUI never stalls. Its JSON lines come back as ``TrainEvent``s through a signal.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, Signal

import detector
from detector.train_config import EventKind, TrainConfig, TrainEvent


class TrainRunner(QObject):
    """Starts and watches one training child process."""

    event = Signal(object)  # a TrainEvent for every JSON line (start, step, checkpoint, eval, done, ...)
    finished = Signal(dict)  # {"ok", "cancelled", "checkpoint", "message", "metrics", "log"}

    def __init__(self, parent=None):
        super().__init__(parent)
        self.proc: QProcess | None = None
        self._buf = b""
        self._metrics: dict = {}
        self._error = ""
        self._stderr = b""
        self.log_path: Path | None = None
        self.output: Path | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.state() != QProcess.ProcessState.NotRunning

    def start(self, folder: str, db_path: str, output: Path, config: TrainConfig,
              active: str | None) -> None:
        """``config`` as the settings dialog left it; ``weights="active"`` means ``active``."""
        self.output = Path(output)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = self.output.with_suffix(".log.jsonl")
        self.log_path.write_text("")
        self._buf, self._metrics, self._error, self._stderr = b"", {}, "", b""
        self._kinds: set[str] = set()
        self.summary: dict = {}
        args = ["-m", "detector.cli", "train", folder, "--project", db_path, "-o", str(self.output),
                "--json-events", "--evaluate", "--no-register", *config.for_project(active).to_argv()]
        if active and Path(active).exists():
            args += ["--compare", active]
        proc = QProcess(self)
        env = QProcessEnvironment.systemEnvironment()
        env.insert("PYTHONUNBUFFERED", "1")
        proc.setProcessEnvironment(env)
        proc.setWorkingDirectory(str(Path(detector.__file__).resolve().parent.parent))
        proc.readyReadStandardOutput.connect(self._read)
        proc.readyReadStandardError.connect(lambda: setattr(self, "_stderr", (self._stderr + bytes(
            proc.readAllStandardError()))[-20000:]))
        proc.finished.connect(self._done)
        proc.errorOccurred.connect(self._proc_error)
        self.proc = proc
        proc.start(sys.executable, args)

    def cancel(self) -> None:
        """SIGTERM: the trainer stops at the next step and keeps a resumable checkpoint."""
        if self.running:
            self.proc.terminate()

    def kill(self) -> None:
        if self.running:
            self.proc.kill()
            self.proc.waitForFinished(5000)

    def _read(self) -> None:
        self._buf += bytes(self.proc.readAllStandardOutput())
        *lines, self._buf = self._buf.split(b"\n")
        with open(self.log_path, "ab") as log:
            for raw in lines:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("{"):
                    continue
                log.write(raw + b"\n")
                try:
                    ev = TrainEvent.from_json(line)
                except ValueError:  # json's errors are ValueErrors too
                    try:
                        self.summary = json.loads(line)  # the closing summary line of `loupe train`
                    except json.JSONDecodeError:
                        pass
                    continue
                self._kinds.add(ev.kind)
                if ev.kind is EventKind.EVAL:
                    self._metrics = ev.metrics
                elif ev.kind is EventKind.ERROR:
                    self._error = ev.message
                self.event.emit(ev)

    def _proc_error(self, err) -> None:
        if err == QProcess.ProcessError.FailedToStart:
            self.finished.emit({"ok": False, "cancelled": False, "checkpoint": None,
                                "message": "could not start the training process", "metrics": {}})

    def _done(self, code: int, status) -> None:
        self._read()
        cancelled = EventKind.CANCELLED in self._kinds
        crashed = status == QProcess.ExitStatus.CrashExit and not cancelled
        ok = code == 0 and EventKind.DONE in self._kinds
        if self._error:
            message = self._error
        elif crashed or (code != 0 and not cancelled):
            tail = self._stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
            message = ("The training process stopped unexpectedly"
                       + (f": {' '.join(tail)}" if tail else "") + ". The current model is kept.")
        else:
            message = "cancelled; the current model is kept" if cancelled else "done"
        self.finished.emit({"ok": ok and not cancelled, "cancelled": cancelled,
                            "checkpoint": str(self.output), "message": message,
                            "metrics": self._metrics, "log": str(self.log_path),
                            "images_seen": self.summary.get("images_seen", 0)})
