"""One-off studies behind the documentation's evidence: the seed's research questions, the ablations, the
simulated sites of site adaptation and site calibration.

Run from a checkout with the training extras (`pip install -e '.[training]'`), e.g. `python -m
studies.research`; they write the generated files under results/ that docs/ includes. Not installed with the
package (pyproject.toml packages only pneumonia, pneumonia_cli, app and training), not in the image, and no
installed package imports them (the import-linter contract in pyproject.toml).
"""
