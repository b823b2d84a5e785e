"""The HTTP service over the `pneumonia` library. Research use only; not a medical device."""
