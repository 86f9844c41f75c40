"""dermbatch: bulk classification of dermatoscopic images into the seven HAM10000 classes.

A research and triage aid, not a diagnostic device.
"""

__version__ = "0.1.0"
