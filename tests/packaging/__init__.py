"""Packaging: what `pip install .` brings, what the wheel holds, what the image installs."""
