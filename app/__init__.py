"""Pneumonia-screening research service. Research use only; not a medical device."""

__version__ = "0.1.0"
