"""Following a scan's events with a progress bar, for `flakescan scan` and the demo."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .client import ControlClient, DaemonUnreachable, EventSubscriber

__all__ = ["ScanFailed", "progress_bar", "run_remote_scan"]


class ScanFailed(RuntimeError):
    def __init__(self, outcome: dict[str, Any]) -> None:
        super().__init__(outcome.get("reason", "scan failed"))
        self.outcome = outcome


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]scan {task.fields[scan_id]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tiles  {task.fields[flakes]} flakes"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def progress_updater(progress: Progress, task: Any) -> Callable[[str, dict[str, Any]], None]:
    """A callback that moves the bar on `tile.processed` and counts `flake.found`."""

    def update(topic: str, data: dict[str, Any]) -> None:
        if topic == "tile.processed":
            progress.update(task, completed=data["tiles_done"], total=data["tiles_planned"])
        elif topic == "flake.found":
            progress.update(task, flakes=progress.tasks[task].fields["flakes"] + 1)

    return update


def run_remote_scan(
    control: str,
    events: str,
    params: dict[str, Any],
    console: Console,
    *,
    show_progress: bool = True,
    idle_timeout_s: float = 120.0,
    method: str = "scan_start",
) -> dict[str, Any]:
    """Start a scan on a running daemon (or resume one: method "scan_resume") and follow
    it to its end; returns the outcome.

    Subscribes before asking, so no event of the scan is missed. Raises ScanFailed with the
    outcome of a failed scan, DaemonUnreachable if the daemon goes silent.
    """
    client = ControlClient(control)
    with EventSubscriber(events, ("scan.", "tile.", "flake.")) as sub:
        answer = client.request(method, params)
        if not answer.get("success"):
            raise ScanFailed({"reason": answer.get("msg", f"{method} refused"), "refused": True})
        scan_id = answer["scan_id"]
        bar = progress_bar(console) if show_progress else None
        task = None
        if bar is not None:
            bar.start()
            task = bar.add_task(
                "scan",
                total=answer["tiles"],
                completed=answer.get("tiles_done", 0),
                scan_id=scan_id,
                flakes=0,
            )
        update = progress_updater(bar, task) if bar is not None else (lambda t, d: None)
        try:
            while True:
                ev = sub.next(timeout_s=idle_timeout_s)
                if ev is None:
                    raise DaemonUnreachable(
                        f"no event for {idle_timeout_s:g} s during scan {scan_id}"
                    )
                data = ev["data"]
                if data.get("scan_id") != scan_id:
                    continue
                update(ev["topic"], data)
                if ev["topic"] == "scan.finished":
                    return data
                if ev["topic"] == "scan.failed":
                    raise ScanFailed(data)
        finally:
            if bar is not None:
                bar.stop()
