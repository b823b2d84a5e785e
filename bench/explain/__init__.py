"""Explanation faithfulness benchmark (`python -m bench.explain`)."""
