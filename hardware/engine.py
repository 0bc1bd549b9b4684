"""An MDA engine that fails loudly.

pymmcore-plus's default `MDAEngine` logs a warning and carries on when an XY move, a channel
change or a snap fails, so an acquisition can "complete" with tiles missing. A flake scan
must not: this engine routes every move through the `Microscope` (travel limits checked
before commanding) and lets every device error propagate, so the runner stops and the scan
fails with the reason. Moves, waits and snaps go through the microscope's fault policy
(bounded retries, re-homing), which knows the tile it works on, for its messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pymmcore_plus.mda import MDAEngine
from pymmcore_plus.metadata.schema import SummaryMetaV1
from useq import AcquireImage, MDAEvent, MDASequence

from .errors import DeviceError
from .focus import FocusTracker
from .microscope import Microscope, _device_call

__all__ = ["StrictMDAEngine"]


class StrictMDAEngine(MDAEngine):
    """MDAEngine whose moves honour travel limits and whose failures raise."""

    def __init__(self, microscope: Microscope) -> None:
        super().__init__(
            microscope.core, use_hardware_sequencing=False, restore_initial_state=False
        )
        self.microscope = microscope
        # When set (by the scan, after its focus map), every tile's Z comes from the focus
        # surface, and the tracker says when to refocus.
        self.focus: FocusTracker | None = None

    def setup_sequence(self, sequence: MDASequence) -> SummaryMetaV1 | None:
        # The parent fits grid plans to the current field of view; nothing moves yet. Then
        # the whole plan is refused up front if any position lies outside the limits.
        meta = super().setup_sequence(sequence)
        for event in sequence:
            if event.x_pos is not None and event.y_pos is not None:
                self.microscope.check_xy(event.x_pos, event.y_pos)
                if self.focus is not None:
                    self.microscope.check_z(self.focus.z_for(event.x_pos, event.y_pos))
            if event.z_pos is not None:
                self.microscope.check_z(event.z_pos)
        return meta

    def setup_event(self, event: MDAEvent) -> None:
        mic = self.microscope
        mic.faults.tile = int(event.index.get("g", event.index.get("p", 0)))
        self.setup_single_event(event)
        # The stages first, under the fault policy (a stage that does not arrive is sent
        # again); then whatever else the event changed.
        if event.x_pos is not None or event.y_pos is not None:
            mic.wait_xy()
        if event.z_pos is not None or self.focus is not None:
            mic.wait_z()
        with _device_call("system", "wait for devices"):
            self.mmcore.waitForSystem()
        if self.focus is not None and self.focus.refocus_due():
            self.focus.refocus(self.microscope)

    def setup_single_event(self, event: MDAEvent) -> None:
        mic = self.microscope
        if event.x_pos is not None or event.y_pos is not None:
            x, y = event.x_pos, event.y_pos
            if x is None or y is None:
                cx, cy = mic.position()
                x, y = (cx if x is None else x), (cy if y is None else y)
            mic.move_xy(x, y, wait=False)
            if self.focus is not None:
                mic.move_z(self.focus.z_for(x, y), wait=False)
        if event.z_pos is not None and self.focus is None:
            mic.move_z(event.z_pos, wait=False)
        if event.channel is not None:
            with _device_call("config", f"set {event.channel.group}={event.channel.config}"):
                self.mmcore.setConfig(event.channel.group, event.channel.config)
        if event.exposure is not None:
            with _device_call(mic.camera_label, f"set exposure {event.exposure} ms"):
                self.mmcore.setExposure(event.exposure)

    def teardown_sequence(self, sequence: MDASequence) -> None:
        self.microscope.faults.tile = None
        super().teardown_sequence(sequence)

    def exec_event(self, event: MDAEvent) -> Iterable:
        # The parent logs and skips actions it cannot run (autofocus without a device,
        # custom actions); a scan must not silently skip a step it asked for.
        action = getattr(event, "action", None)
        if action is not None and not isinstance(action, AcquireImage):
            raise DeviceError(f"{type(action).__name__} is not supported by this scan engine")
        return super().exec_event(event)

    def exec_single_event(self, event: MDAEvent) -> Iterator:
        image = self.microscope.snap_image()
        meta = self.get_frame_metadata(event, include_position=True)
        yield image, event, meta
