"""Published complex refractive indices of TMD monolayers, reduced to compact tables.

Why a separate module: the raw tables are long (1 nm or 0.22 nm steps) and noisy; the thin-film
model only needs the visible range on the 5 nm grid it integrates over (400-720 nm), so each
source is reduced once, here, with its reference and the reduction written next to it.

Source of every table: the refractiveindex.info database (M. N. Polyanskiy,
https://github.com/polyanskiy/refractiveindex.info-database), which is in the public domain
(copyright and related rights waived via CC0 1.0). Rows are (wavelength nm, n, k) with the
n + ik sign convention (k >= 0 absorbs).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "MOS2_ERMOLAEV_2020_1L",
    "MOS2_ZHANG_2015_1L",
    "SOURCES",
    "WSE2_HSU_2019_1L",
]

# MoS2 monolayer (CVD, monocrystalline), from micro-reflectance contrast spectra on SiO2/Si:
# H. Zhang, Y. Ma, Y. Wan, X. Rong, Z. Xie, W. Wang, L. Dai, "Measuring the refractive index
# of highly crystalline monolayer MoS2 with high confidence", Sci. Rep. 5, 8440 (2015),
# doi:10.1038/srep08440. Database file database/data/main/MoS2/nk/Zhang.yml (1 nm steps,
# 400-750 nm, point-to-point noise of about 0.1 in n and k).
# Reduction: mean of the raw points in each 5 nm bin [c - 2.5, c + 2.5) nm, centre c
# (the 400 nm bin holds only the raw 400-402 nm points); rounded to 3 decimals.
MOS2_ZHANG_2015_1L = np.array(
    [
        (400, 2.308, 2.264),
        (405, 2.462, 2.301),
        (410, 2.622, 2.376),
        (415, 2.854, 2.352),
        (420, 3.057, 2.356),
        (425, 3.281, 2.248),
        (430, 3.495, 2.004),
        (435, 3.747, 1.715),
        (440, 4.035, 1.571),
        (445, 4.295, 1.399),
        (450, 4.344, 1.312),
        (455, 4.487, 1.182),
        (460, 4.495, 1.138),
        (465, 4.470, 1.061),
        (470, 4.484, 0.974),
        (475, 4.451, 0.909),
        (480, 4.482, 0.892),
        (485, 4.491, 0.835),
        (490, 4.496, 0.854),
        (495, 4.613, 0.869),
        (500, 4.675, 0.872),
        (505, 4.704, 0.839),
        (510, 4.644, 0.774),
        (515, 4.630, 0.756),
        (520, 4.575, 0.716),
        (525, 4.525, 0.666),
        (530, 4.439, 0.631),
        (535, 4.368, 0.586),
        (540, 4.306, 0.556),
        (545, 4.230, 0.575),
        (550, 4.153, 0.547),
        (555, 4.071, 0.569),
        (560, 4.039, 0.574),
        (565, 3.996, 0.557),
        (570, 3.980, 0.609),
        (575, 3.898, 0.657),
        (580, 3.830, 0.729),
        (585, 3.810, 0.803),
        (590, 3.836, 0.920),
        (595, 3.898, 1.033),
        (600, 3.980, 1.142),
        (605, 4.113, 1.166),
        (610, 4.316, 1.105),
        (615, 4.432, 0.965),
        (620, 4.419, 0.861),
        (625, 4.434, 0.748),
        (630, 4.379, 0.695),
        (635, 4.292, 0.738),
        (640, 4.235, 0.809),
        (645, 4.289, 0.936),
        (650, 4.398, 0.979),
        (655, 4.594, 0.946),
        (660, 4.789, 0.751),
        (665, 4.777, 0.504),
        (670, 4.734, 0.335),
        (675, 4.514, 0.257),
        (680, 4.367, 0.212),
        (685, 4.239, 0.186),
        (690, 4.066, 0.129),
        (695, 4.028, 0.132),
        (700, 3.942, 0.087),
        (705, 3.819, 0.071),
        (710, 3.720, 0.120),
        (715, 3.733, 0.061),
        (720, 3.659, 0.112),
    ]
)

# MoS2 monolayer (on SiO2/Si), spectroscopic ellipsometry with Tauc-Lorentz oscillators:
# G. A. Ermolaev, Yu. V. Stebunov, A. A. Vyshnevyy, D. E. Tatarkin, D. I. Yakubovsky,
# S. M. Novikov, D. G. Baranov, T. Shegai, A. Y. Nikitin, A. V. Arsenin, V. S. Volkov,
# "Broadband optical properties of monolayer and bulk MoS2", npj 2D Mater. Appl. 4, 21 (2020),
# doi:10.1038/s41699-020-0155-x. Database file database/data/main/MoS2/nk/Ermolaev-1L.yml
# (smooth model curve, 1 nm steps, 290-3300 nm; k is exactly 0 above 706 nm by construction).
# Reduction: the raw rows at every 5 nm, rounded to 3 decimals. Kept as an independent
# second source to bound how much MoS2 contrasts depend on the choice of index data.
MOS2_ERMOLAEV_2020_1L = np.array(
    [
        (400, 3.154, 3.758),
        (405, 3.404, 3.853),
        (410, 3.683, 3.911),
        (415, 3.986, 3.923),
        (420, 4.302, 3.878),
        (425, 4.614, 3.770),
        (430, 4.904, 3.597),
        (435, 5.150, 3.367),
        (440, 5.337, 3.099),
        (445, 5.459, 2.813),
        (450, 5.519, 2.528),
        (455, 5.525, 2.263),
        (460, 5.488, 2.024),
        (465, 5.423, 1.817),
        (470, 5.338, 1.643),
        (475, 5.241, 1.499),
        (480, 5.139, 1.383),
        (485, 5.035, 1.292),
        (490, 4.934, 1.223),
        (495, 4.836, 1.174),
        (500, 4.744, 1.142),
        (505, 4.658, 1.126),
        (510, 4.580, 1.124),
        (515, 4.512, 1.135),
        (520, 4.454, 1.158),
        (525, 4.408, 1.192),
        (530, 4.377, 1.234),
        (535, 4.363, 1.283),
        (540, 4.367, 1.335),
        (545, 4.391, 1.385),
        (550, 4.436, 1.428),
        (555, 4.499, 1.456),
        (560, 4.575, 1.464),
        (565, 4.657, 1.447),
        (570, 4.734, 1.403),
        (575, 4.795, 1.338),
        (580, 4.831, 1.259),
        (585, 4.839, 1.178),
        (590, 4.820, 1.111),
        (595, 4.779, 1.073),
        (600, 4.732, 1.080),
        (605, 4.716, 1.151),
        (610, 4.813, 1.264),
        (615, 5.061, 1.260),
        (620, 5.240, 1.031),
        (625, 5.220, 0.786),
        (630, 5.120, 0.639),
        (635, 5.019, 0.567),
        (640, 4.937, 0.538),
        (645, 4.878, 0.535),
        (650, 4.843, 0.552),
        (655, 4.843, 0.582),
        (660, 4.895, 0.612),
        (665, 5.017, 0.594),
        (670, 5.154, 0.438),
        (675, 5.131, 0.180),
        (680, 4.965, 0.030),
        (685, 4.818, 0.002),
        (690, 4.728, 0.001),
        (695, 4.661, 0.000),
        (700, 4.607, 0.000),
        (705, 4.560, 0.000),
        (710, 4.519, 0.000),
        (715, 4.483, 0.000),
        (720, 4.450, 0.000),
    ]
)

# WSe2 monolayer (exfoliated), from micro-reflectance spectra:
# C. Hsu, R. Frisenda, R. Schmidt, A. Arora, S. M. de Vasconcellos, R. Bratschitsch,
# H. S. J. van der Zant, A. Castellanos-Gomez, "Thickness-dependent refractive index of 1L, 2L,
# and 3L MoS2, MoSe2, WS2, and WSe2", Adv. Optical Mater. 7, 1900239 (2019),
# doi:10.1002/adom.201900239. Database file database/data/main/WSe2/nk/Hsu-1L.yml (smooth,
# digitised in about 0.22 nm steps, 397-1000 nm; the A exciton sits at about 740 nm, just
# outside the grid, so k rises steeply above 705 nm).
# Reduction: linear interpolation of the raw rows at every 5 nm (the raw rows bracketing each
# grid point lie within 0.12 nm of it), rounded to 3 decimals.
WSE2_HSU_2019_1L = np.array(
    [
        (400, 2.947, 1.605),
        (405, 2.918, 1.825),
        (410, 2.868, 1.908),
        (415, 2.948, 1.904),
        (420, 3.109, 1.933),
        (425, 3.378, 1.853),
        (430, 3.607, 1.719),
        (435, 3.784, 1.616),
        (440, 3.959, 1.556),
        (445, 4.103, 1.504),
        (450, 4.272, 1.483),
        (455, 4.420, 1.471),
        (460, 4.544, 1.459),
        (465, 4.625, 1.442),
        (470, 4.663, 1.449),
        (475, 4.664, 1.465),
        (480, 4.636, 1.515),
        (485, 4.608, 1.596),
        (490, 4.591, 1.697),
        (495, 4.595, 1.793),
        (500, 4.584, 1.879),
        (505, 4.535, 1.927),
        (510, 4.382, 1.965),
        (515, 4.113, 2.009),
        (520, 3.804, 2.138),
        (525, 3.614, 2.267),
        (530, 3.621, 2.322),
        (535, 3.802, 2.286),
        (540, 4.078, 2.174),
        (545, 4.412, 2.031),
        (550, 4.742, 1.871),
        (555, 5.071, 1.696),
        (560, 5.328, 1.537),
        (565, 5.480, 1.394),
        (570, 5.547, 1.269),
        (575, 5.547, 1.184),
        (580, 5.511, 1.132),
        (585, 5.479, 1.100),
        (590, 5.457, 1.074),
        (595, 5.485, 1.027),
        (600, 5.501, 0.959),
        (605, 5.512, 0.875),
        (610, 5.508, 0.775),
        (615, 5.487, 0.680),
        (620, 5.440, 0.602),
        (625, 5.362, 0.555),
        (630, 5.268, 0.519),
        (635, 5.189, 0.495),
        (640, 5.106, 0.469),
        (645, 5.050, 0.455),
        (650, 4.975, 0.455),
        (655, 4.918, 0.455),
        (660, 4.870, 0.469),
        (665, 4.805, 0.455),
        (670, 4.774, 0.415),
        (675, 4.728, 0.387),
        (680, 4.672, 0.351),
        (685, 4.590, 0.318),
        (690, 4.516, 0.296),
        (695, 4.378, 0.308),
        (700, 4.209, 0.359),
        (705, 4.040, 0.430),
        (710, 3.856, 0.552),
        (715, 3.645, 0.731),
        (720, 3.447, 1.028),
    ]
)

# Short citations for provenance, keyed like optics.refractive_index names.
SOURCES: dict[str, str] = {
    "MoS2-Zhang2015": "Zhang et al., Sci. Rep. 5, 8440 (2015), doi:10.1038/srep08440",
    "MoS2-Ermolaev2020": "Ermolaev et al., npj 2D Mater. Appl. 4, 21 (2020), "
    "doi:10.1038/s41699-020-0155-x",
    "WSe2-Hsu2019": "Hsu et al., Adv. Optical Mater. 7, 1900239 (2019), doi:10.1002/adom.201900239",
}
