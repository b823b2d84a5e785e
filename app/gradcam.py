"""Moved to the app.explain package; this name keeps older imports working."""

from app.explain.methods import GradCAM as GradCam
from app.explain.overlay import JET, colorize, encode_png, overlay

__all__ = ["JET", "GradCam", "colorize", "encode_png", "overlay"]
