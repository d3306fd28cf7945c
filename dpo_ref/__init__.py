"""dporef: an experiment runner for studying how the reference policy shapes DPO."""

__version__ = "0.1.0"
