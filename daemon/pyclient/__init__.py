"""`flakescan.client`: the Python client for notebooks, scripts and the microscope's own
Python (e.g. Gatan DigitalMicrograph's).

One `Client` speaks to both of the service's doors: diffraction analyses over HTTP
(`flakescan serve`, or the daemon with `[http] enabled`) or, without an HTTP URL, over the
daemon's ZMQ control socket; scan control, events and the flake catalogue over ZMQ. Arrays
travel as .npy bytes (HTTP) or bare binary frames (ZMQ), never pickled. Answers are typed:
`Analysis` with `XrdResult`, `PacbedResult`, `PhaseResult` or `FlakeResult` entries (every field the
server sent is kept).

    from flakescan.client import Client
    c = Client("http://127.0.0.1:8765")
    r = c.analyze("sto.dm4", model="pacbed_srtio3", conv_angle_mrad=20)
    print(r.results[0].thickness_nm, r.results[0].mistilt_mrad)
"""

from .client import (
    Analysis,
    Client,
    ClientError,
    FlakeResult,
    PacbedResult,
    PhaseResult,
    XrdResult,
    analyze,
)

__all__ = [
    "Analysis",
    "Client",
    "ClientError",
    "FlakeResult",
    "PacbedResult",
    "PhaseResult",
    "XrdResult",
    "analyze",
]
