"""Where the simulated terminals are: the handbook's 100×100 grid on a real map, and abroad.

The handbook places customers and terminals on a ``[0, 100] × [0, 100]`` grid with no unit.
txwatch reads one grid unit as one kilometre and centres the square on Brussels (Grand-Place),
so the grid is a 100 km × 100 km square of Belgium: ``x`` grows eastwards, ``y`` northwards, and
``(50, 50)`` is the Grand-Place. Every grid terminal is in country ``BE``.

Foreign terminals (scenario 5, account takeover, and the legitimate trips that make it hard)
sit in :data:`FOREIGN_CITIES`, every one of them more than 1,100 km from any grid point: a card
used at home and in one of these cities within an hour moved faster than an airliner.

>>> lat, lon = grid_to_latlon(50.0, 50.0)
>>> round(float(lat), 4), round(float(lon), 4)
(50.8467, 4.3525)
>>> lat2, lon2 = grid_to_latlon(60.0, 50.0)          # 10 units east
>>> round(float(haversine_km(lat, lon, lat2, lon2)), 1)
10.0
>>> min(round(float(city_distance_from_grid_km(c))) for c in FOREIGN_CITIES) > 1000
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

GRID_SIZE = 100.0
"""Side of the handbook's grid, in grid units (= km here)."""
CENTER_LAT = 50.8467
"""Latitude of the grid's centre (Brussels, Grand-Place)."""
CENTER_LON = 4.3525
"""Longitude of the grid's centre."""
KM_PER_DEG_LAT = 111.32
"""Kilometres per degree of latitude (spherical Earth; good to 0.5 % at this latitude)."""
KM_PER_DEG_LON = KM_PER_DEG_LAT * math.cos(math.radians(CENTER_LAT))
"""Kilometres per degree of longitude at the grid's centre latitude."""
HOME_COUNTRY = "BE"
EARTH_RADIUS_KM = 6371.0088

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class City:
    """A city abroad that hosts foreign terminals."""

    name: str
    country: str
    lat: float
    lon: float


FOREIGN_CITIES: tuple[City, ...] = (
    City("Rome", "IT", 41.9028, 12.4964),
    City("Madrid", "ES", 40.4168, -3.7038),
    City("Lisbon", "PT", 38.7223, -9.1393),
    City("Athens", "GR", 37.9838, 23.7275),
    City("Bucharest", "RO", 44.4268, 26.1025),
    City("Kyiv", "UA", 50.4501, 30.5234),
    City("Istanbul", "TR", 41.0082, 28.9784),
    City("Casablanca", "MA", 33.5731, -7.5898),
    City("Cairo", "EG", 30.0444, 31.2357),
    City("Lagos", "NG", 6.5244, 3.3792),
    City("Dubai", "AE", 25.2048, 55.2708),
    City("New York", "US", 40.7128, -74.0060),
    City("Mexico City", "MX", 19.4326, -99.1332),
    City("Sao Paulo", "BR", -23.5505, -46.6333),
    City("Bangkok", "TH", 13.7563, 100.5018),
    City("Manila", "PH", 14.5995, 120.9842),
)
"""Cities abroad, nearest first (Rome is 1,173 km from Brussels)."""


def grid_to_latlon(
    x: FloatArray | float, y: FloatArray | float
) -> tuple[FloatArray, FloatArray]:
    """Latitude and longitude (degrees) of grid points (equirectangular, 1 unit = 1 km)."""
    half = GRID_SIZE / 2
    lat = CENTER_LAT + (np.asarray(y, dtype=np.float64) - half) / KM_PER_DEG_LAT
    lon = CENTER_LON + (np.asarray(x, dtype=np.float64) - half) / KM_PER_DEG_LON
    return lat, lon


def haversine_km(
    lat1: FloatArray | float, lon1: FloatArray | float,
    lat2: FloatArray | float, lon2: FloatArray | float,
) -> FloatArray:
    """Great-circle distance in km (vectorised)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp = p2 - p1
    dl = np.radians(np.asarray(lon2) - np.asarray(lon1))
    h = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return np.asarray(2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.minimum(h, 1.0))))


def city_distance_from_grid_km(city: City) -> float:
    """Distance from ``city`` to the nearest point of the grid (its nearest corner or edge)."""
    xs = np.linspace(0, GRID_SIZE, 21)
    gx, gy = np.meshgrid(xs, xs)
    lat, lon = grid_to_latlon(gx.ravel(), gy.ravel())
    return float(haversine_km(lat, lon, city.lat, city.lon).min())


def flight_seconds(city: City) -> float:
    """Door-to-door time of a legitimate trip from the grid to ``city``: 2 h of airports and
    transfers plus the great-circle distance at 800 km/h. Legitimate travellers never move
    faster than this, so their implied speed stays below 800 km/h."""
    km = float(haversine_km(CENTER_LAT, CENTER_LON, city.lat, city.lon))
    return 7200.0 + km / 800.0 * 3600.0
