"""Vectorised distances for placement (the physics itself is in `shared.geo`)."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from shared.geo import ACCESS_RTT_MS, EARTH_RADIUS_KM, FIBER_KM_PER_MS_RTT, haversine_km

__all__ = ["ACCESS_RTT_MS", "EARTH_RADIUS_KM", "FIBER_KM_PER_MS_RTT", "haversine_km"]

PROXIMITY_SCALE_KM = 5000.0  # the spec's proximity score reaches 0 at this distance

F64 = npt.NDArray[np.float64]


def unit_vectors(lat_deg: F64, lon_deg: F64) -> F64:
    """(n, 3) points on the unit sphere: a distance is then one dot product and an arccos."""
    lat, lon = np.radians(lat_deg), np.radians(lon_deg)
    cos_lat = np.cos(lat)
    return np.stack([cos_lat * np.cos(lon), cos_lat * np.sin(lon), np.sin(lat)], axis=1)


F32 = npt.NDArray[np.float32]

# Abramowitz & Stegun 4.4.45: arccos(x) = sqrt(1 - x) * p(x) on [0, 1], |error| <= 6.7e-5 rad,
# i.e. <= 0.43 km on the Earth: far below what a latency estimate can resolve, and ~2x faster
# than np.arccos over 100k nodes.
_ACOS = (
    np.float32(-0.0187293),
    np.float32(0.0742610),
    np.float32(-0.2121144),
    np.float32(1.5707288),
)


def fast_arccos(x: F32) -> F32:
    a = np.abs(x)
    np.minimum(a, np.float32(1.0), out=a)
    r = np.multiply(a, _ACOS[0])
    r += _ACOS[1]
    r *= a
    r += _ACOS[2]
    r *= a
    r += _ACOS[3]
    np.subtract(np.float32(1.0), a, out=a)
    np.sqrt(a, out=a)
    r *= a
    np.copysign(r, x, out=r)  # arccos(-x) = pi - arccos(x)
    r += (x < 0) * np.float32(math.pi)
    return r


def distances_km(columns: F32, lat: float, lon: float) -> F32:
    """Great-circle distance from (lat, lon) to each point of `columns` (3, n) unit vectors."""
    phi, lam = math.radians(lat), math.radians(lon)
    ux, uy, uz = math.cos(phi) * math.cos(lam), math.cos(phi) * math.sin(lam), math.sin(phi)
    dot = columns[0] * np.float32(ux)
    dot += columns[1] * np.float32(uy)
    dot += columns[2] * np.float32(uz)
    distance = fast_arccos(dot)
    distance *= np.float32(EARTH_RADIUS_KM)
    return distance


def radius_for_rtt_km(rtt_ms: float, access_ms: float = 0.0) -> float:
    """The farthest a node can be and still answer within `rtt_ms`."""
    return max(0.0, rtt_ms - access_ms) * FIBER_KM_PER_MS_RTT
