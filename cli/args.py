"""argparse value types: catch obvious input mistakes before any RPC (exit 2, like any usage error).

The controller stays the authority; these only spare a round trip and give a clearer message.
"""

from __future__ import annotations

import argparse

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1


def _int(text: str, minimum: int, maximum: int, what: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    if value > maximum:
        raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {text!r}")
    return value


def positive_u32(text: str) -> int:
    return _int(text, 1, UINT32_MAX, "a positive integer")


def batch_count(text: str) -> int:
    return _int(text, 1, 100, "an integer from 1 to 100")


def positive_u64(text: str) -> int:
    return _int(text, 1, UINT64_MAX, "a positive integer")


def non_negative_u32(text: str) -> int:
    return _int(text, 0, UINT32_MAX, "an integer >= 0")


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def seconds_or_never(text: str) -> float:
    """Seconds (>= 0), or `never`."""
    if text.strip().lower() == "never":
        return float("inf")
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds or 'never', got {text!r}"
        ) from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds or 'never', got {text!r}")
    return value


def label(text: str) -> tuple[str, str]:
    """`key=value`; the key must be non-empty, the value may be empty."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"must be key=value, got {text!r}")
    return key, value


def non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def controller(text: str) -> str:
    """HOST:PORT (or any gRPC target such as unix:/path); only emptiness is rejected here."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must be HOST:PORT")
    return text.strip()


EDGE_TYPES = ("mec", "cdn", "iot", "onprem", "telco", "cloud")


def lat_lon(text: str) -> tuple[float, float]:
    """`LAT,LON` in degrees, e.g. 48.85,2.35."""
    lat_text, sep, lon_text = text.partition(",")
    try:
        lat, lon = float(lat_text), float(lon_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be LAT,LON like 48.85,2.35, got {text!r}") from None
    if not sep or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise argparse.ArgumentTypeError(
            f"must be LAT,LON with latitude in [-90, 90] and longitude in [-180, 180], got {text!r}"
        )
    return lat, lon


def countries(text: str) -> list[str]:
    """Comma-separated ISO 3166-1 alpha-2 codes: `DE,FR`."""
    codes = [c.strip().upper() for c in text.split(",") if c.strip()]
    bad = [c for c in codes if len(c) != 2 or not c.isalpha()]
    if not codes or bad:
        raise argparse.ArgumentTypeError(f"must be ISO country codes like DE,FR, got {text!r}")
    return codes


def edge_types(text: str) -> list[str]:
    """Comma-separated edge types: `mec,cdn`."""
    kinds = [k.strip().lower() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in EDGE_TYPES]
    if not kinds or bad:
        raise argparse.ArgumentTypeError(
            f"must be edge types from {', '.join(EDGE_TYPES)}, got {text!r}"
        )
    return kinds


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value
