"""A PMS simulator: Open Dental's API subset and the bridge agent API over real HTTP.

`Simulator` serves many simulated practices from one aiohttp server with SQLite state and a
simulated clock; see `pms_simulator.server` and docs/simulator.md. The PMSes it plays are
personalities (`pms_simulator.personality`), the built-in ones registered by `personalities`.
"""

# Registers the built-in personalities (Open Dental, Eaglesoft, Dentrix) before any Simulator exists.
from pms_simulator import personalities as personalities
from pms_simulator.errors import ApiError, DriftError, SimulatorError, UnknownPracticeError
from pms_simulator.faults import FaultConfig
from pms_simulator.server import RequestRecord, Simulator, simulator_credentials

__all__ = [
    "ApiError",
    "DriftError",
    "FaultConfig",
    "RequestRecord",
    "Simulator",
    "SimulatorError",
    "UnknownPracticeError",
    "simulator_credentials",
]
