"""Dataset condensation by distribution matching: DM, IDM and DDM."""

__version__ = "0.1.0"
