"""Offline training package: fine-tune chest X-ray classifiers, compare them, export a model bundle."""
