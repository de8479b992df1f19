"""Tolerances shared by the tests, each with the reason for its size."""

# A pose from OpenCV's iterative PnP against the golden poses of the original code, and the errors
# computed from it: the Levenberg-Marquardt refinement stops at OpenCV's own criteria, and its last
# digits change between OpenCV releases (5.0.0 and 5.1.0 differ by 3e-8 on the golden R, 9e-9 m on
# a translation error). 1e-6 in R (unitless), t (metres: 1 micron), pixels and degrees is far
# below what any metric sees: a 5 px threshold is about 1e-2 in R.
PNP_ATOL = 1e-6
